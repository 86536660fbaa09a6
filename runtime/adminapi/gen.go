// Package adminapi is the macvz daemon's admin API (admin.proto): gRPC on
// a root-only unix socket in the state directory, served by cri/admin.go
// and spoken by the `macvz node`, `macvz vm` and `macvz image` commands.
//
// The generated files (admin.pb.go, admin_grpc.pb.go) are committed; CI
// does not regenerate them. To regenerate after editing admin.proto
// (from this directory):
//
//	apt-get install -y protobuf-compiler   # libprotoc 3.21.12 (Debian bookworm)
//	go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
//	PATH=$HOME/go/bin:$PATH go generate .
//
// Keep protoc-gen-go equal to google.golang.org/protobuf in go.mod, and
// protoc-gen-go-grpc at the version google.golang.org/grpc's module graph
// names (go list -m all | grep protoc-gen-go-grpc).
package adminapi

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative admin.proto
