// Command etcd is upstream etcd's server, built from its Go module so that the
// reference node image needs nothing that is not in the Go module proxy.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
