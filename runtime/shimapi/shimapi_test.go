package shimapi

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/macvz/macvz/runtime/agentapi"
)

// The generated code links to agentapi's registered agent.proto.
func TestDescriptors(t *testing.T) {
	fd, err := protoregistry.GlobalFiles.FindFileByPath("shim.proto")
	if err != nil {
		t.Fatal(err)
	}
	if fd.Package() != "macvz.shim.v1" || fd.Services().Get(0).FullName() != "macvz.shim.v1.Shim" {
		t.Errorf("package %s, service %s", fd.Package(), fd.Services().Get(0).FullName())
	}
	if fd.Imports().Len() != 1 || fd.Imports().Get(0).Path() != "agent.proto" || fd.Imports().Get(0).IsPlaceholder() {
		t.Errorf("imports: %v", fd.Imports())
	}
	f := (&StartResponse{}).ProtoReflect().Descriptor().Fields().ByName("agent")
	if f.Message().FullName() != "macvz.agent.v1.InfoResponse" {
		t.Errorf("StartResponse.agent is %s", f.Message().FullName())
	}
}

func TestRoundTrip(t *testing.T) {
	in := &StartResponse{Agent: &agentapi.InfoResponse{AgentVersion: "v1", Pid1: true}, BootNs: 42}
	b, err := proto.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	var out StartResponse
	if err := proto.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(in, &out) {
		t.Errorf("got %v", &out)
	}
}
