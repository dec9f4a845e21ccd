#!/bin/sh
# wget for busybox builds whose wget has no -T (Debian's): such a wget still
# accepts -T and then crashes (SIGSEGV) on it. This wrapper removes
# -T SEC / -TSEC / --timeout=SEC / --timeout SEC from the command line (also
# inside bundles such as -qT5) and runs busybox's wget under the timeout applet
# instead. Difference from a real -T: the limit covers the whole run, not each
# network read; that is what tests mean by it for the small pages they fetch.
# Everything else is passed to busybox's wget unchanged.

deadline=
left=$#
# Walk the original arguments from the front, appending what we keep to the
# end of "$@": after $left reaches 0, "$@" is exactly the kept arguments.
while [ "$left" -gt 0 ]; do
    arg=$1
    shift
    left=$((left - 1))
    if [ "$left" -eq 0 ] && [ "${arg#--timeout=}" = "$arg" ]; then
        # Nothing follows, so no value can be taken from the next word: keep
        # the last word as it is (wget needs a URL last anyway).
        set -- "$@" "$arg"
        continue
    fi
    case $arg in
    --)
        set -- "$@" --
        while [ "$left" -gt 0 ]; do
            set -- "$@" "$1"
            shift
            left=$((left - 1))
        done
        ;;
    --timeout=*)
        deadline=${arg#--timeout=}
        ;;
    --timeout)
        deadline=$1
        shift
        left=$((left - 1))
        ;;
    --header | --post-data | --post-file | --output-document | --output-file | \
        --directory-prefix | --proxy | --user-agent | --tries)
        # Long options whose value is the next word: keep both as they are.
        set -- "$@" "$arg" "$1"
        shift
        left=$((left - 1))
        ;;
    --*)
        set -- "$@" "$arg"
        ;;
    -?*)
        # A bundle of short options. O o P Y U t take a value (the rest of the
        # word, else the next word); T is ours; the others are flags.
        rest=${arg#-}
        kept=-
        needs_next=
        while [ -n "$rest" ]; do
            c=${rest%"${rest#?}"}
            rest=${rest#?}
            case $c in
            T)
                if [ -n "$rest" ]; then
                    deadline=$rest
                else
                    deadline=$1
                    shift
                    left=$((left - 1))
                fi
                rest=
                ;;
            [OoPYUt])
                kept=$kept$c$rest
                [ -z "$rest" ] && needs_next=1
                rest=
                ;;
            *)
                kept=$kept$c
                ;;
            esac
        done
        if [ "$kept" != - ]; then
            if [ -n "$needs_next" ]; then
                set -- "$@" "$kept" "$1"
                shift
                left=$((left - 1))
            else
                set -- "$@" "$kept"
            fi
        fi
        ;;
    *)
        set -- "$@" "$arg"
        ;;
    esac
done

case $deadline in
'' | 0) exec /bin/busybox wget "$@" ;;
*) exec /bin/busybox timeout "$deadline" /bin/busybox wget "$@" ;;
esac
