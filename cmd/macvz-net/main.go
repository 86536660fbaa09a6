// Command macvz-net is macvz's CNI plugin (spec 0.3.0–1.1.0: ADD, DEL,
// CHECK, STATUS, GC, VERSION). The daemon runs it through libcni from its
// plugin directory (/opt/macvz/bin); see package netplugin for the modes,
// the configuration and the result.
package main

import "github.com/macvz/macvz/netplugin"

func main() { netplugin.Main() }
