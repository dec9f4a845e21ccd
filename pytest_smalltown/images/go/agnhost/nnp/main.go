// Command nnp prints the effective user id it runs with.
//
// The conformance image "nonewprivs" installs it set-user-ID root: a container
// started as a non-root user then reports uid 0 when privilege escalation is
// allowed and its own uid when the no_new_privs flag forbids the escalation.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Effective uid: %d\n", os.Geteuid())
}
