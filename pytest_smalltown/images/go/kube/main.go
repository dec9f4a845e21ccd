// Command kube is the reference node's single Kubernetes binary.
//
// One multi-call binary instead of six keeps the node image small (the
// components share most of their dependencies) and means one Go build to cache.
// The component is chosen by the first argument, or by the name the binary was
// invoked under (so symlinks such as /usr/bin/kubectl work):
//
//	kube apiserver --etcd-servers=...
//	kubectl get nodes            (via a symlink named kubectl)
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"

	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

var components = map[string]func() *cobra.Command{
	"apiserver":          apiserver.NewAPIServerCommand,
	"controller-manager": controllermanager.NewControllerManagerCommand,
	"scheduler":          func() *cobra.Command { return scheduler.NewSchedulerCommand() },
	"kubelet":            func() *cobra.Command { return kubelet.NewKubeletCommand(context.Background()) },
	"proxy":              proxy.NewProxyCommand,
	"kubectl":            kubectlcmd.NewDefaultKubectlCommand,
}

// aliases map upstream binary names onto component names.
var aliases = map[string]string{
	"kube-apiserver":          "apiserver",
	"kube-controller-manager": "controller-manager",
	"kube-scheduler":          "scheduler",
	"kube-proxy":              "proxy",
}

func lookup(name string) (func() *cobra.Command, bool) {
	if alias, ok := aliases[name]; ok {
		name = alias
	}
	f, ok := components[name]
	return f, ok
}

func usage() {
	var names []string
	for n := range components {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: kube COMPONENT [flags]\ncomponents: %s\n", strings.Join(names, ", "))
}

func main() {
	self := filepath.Base(os.Args[0])
	newCommand, ok := lookup(self)
	if !ok {
		if len(os.Args) < 2 {
			usage()
			os.Exit(2)
		}
		newCommand, ok = lookup(os.Args[1])
		if !ok {
			fmt.Fprintf(os.Stderr, "kube: unknown component %q\n", os.Args[1])
			usage()
			os.Exit(2)
		}
		// Hide the component word from cobra's flag parsing.
		os.Args = append([]string{os.Args[0] + " " + os.Args[1]}, os.Args[2:]...)
	}
	command := newCommand()
	if command.Name() == "kubectl" {
		if err := cli.RunNoErrOutput(command); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	os.Exit(cli.Run(command))
}
