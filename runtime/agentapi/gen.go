// Package agentapi is the protocol between the macvz host (the per-VM shim)
// and macvz-agent inside the guest: agent.proto, the Go code generated from
// it (agent.pb.go, agent_ttrpc.pb.go), and small helpers both sides share:
// the session framing used over virtio-serial (link.go), and flow-controlled
// readers for output and port-forward streams (stream.go).
//
// The generated files are committed; CI does not regenerate them. To
// regenerate after editing agent.proto (from this directory):
//
//	apt-get install -y protobuf-compiler   # libprotoc 3.21.12 (Debian bookworm)
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@v1.2.9
//	go generate .
//
// Keep the plugin versions equal to google.golang.org/protobuf and
// github.com/containerd/ttrpc in go.mod.
package agentapi

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative agent.proto
