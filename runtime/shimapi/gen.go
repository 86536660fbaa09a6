// Package shimapi is the protocol between the macvz daemon and the per-VM
// shim (`macvz shim`): shim.proto and the Go code generated from it
// (shim.pb.go, shim_ttrpc.pb.go). The shim's socket also serves the guest
// agent's service of runtime/agentapi (forwarded to the guest), so a
// daemon talks to both with one ttrpc connection; runtime/shim has the
// client and the server.
//
// The generated files are committed; CI does not regenerate them. To
// regenerate after editing shim.proto (from this directory):
//
//	apt-get install -y protobuf-compiler   # libprotoc 3.21.12 (Debian bookworm)
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install github.com/containerd/ttrpc/cmd/protoc-gen-go-ttrpc@v1.2.9
//	go generate .
//
// Keep the plugin versions equal to google.golang.org/protobuf and
// github.com/containerd/ttrpc in go.mod. shim.proto imports agent.proto
// by that bare name because runtime/agentapi registers it under it.
package shimapi

//go:generate protoc --proto_path=. --proto_path=../agentapi --go_out=. --go_opt=paths=source_relative --go_opt=Magent.proto=github.com/macvz/macvz/runtime/agentapi --go-ttrpc_out=. --go-ttrpc_opt=paths=source_relative --go-ttrpc_opt=Magent.proto=github.com/macvz/macvz/runtime/agentapi shim.proto
