package cri

import (
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	gproto "google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The List verbs answer mostly the items of their last answer
// (listConfigs), yet marshaling them was most of a List's cost in the
// daemon: protobuf encodes the labels and annotations maps at about
// 150 MB/s, 0.8 ms for a thousand sandboxes, every second kubelet asks.
// Each item is encoded once, when it is built (items never change
// afterwards), and the CRI server's codec writes a List answer as those
// encodings one after another: a repeated message field on the wire is
// just each element's tag, length and bytes.

// listCodec is the CRI server's codec: the standard protobuf codec, but
// ListPodSandbox and ListContainers answers whose items all have an
// encoding are written from the encodings.
type listCodec struct {
	base   encoding.CodecV2
	listed *listConfigs
}

func newListCodec(listed *listConfigs) encoding.CodecV2 {
	return listCodec{base: encoding.GetCodecV2(proto.Name), listed: listed}
}

func (c listCodec) Name() string { return proto.Name }

func (c listCodec) Unmarshal(data mem.BufferSlice, v any) error { return c.base.Unmarshal(data, v) }

func (c listCodec) Marshal(v any) (mem.BufferSlice, error) {
	var b *[]byte
	pool := mem.DefaultBufferPool()
	switch r := v.(type) {
	case *runtimeapi.ListPodSandboxResponse:
		b = c.listed.encodeItems(len(r.Items), func(i int) any { return r.Items[i] }, pool.Get)
	case *runtimeapi.ListContainersResponse:
		b = c.listed.encodeItems(len(r.Containers), func(i int) any { return r.Containers[i] }, pool.Get)
	}
	if b == nil {
		return c.base.Marshal(v)
	}
	// gRPC puts the buffer back in the pool once it is sent.
	return mem.BufferSlice{mem.NewBuffer(b, pool)}, nil
}

// listItemsField is the field number of ListPodSandboxResponse.items and
// of ListContainersResponse.containers.
const listItemsField = 1

// encodeItems is the wire form of a List answer of n items (item(i) is
// the i-th) in a buffer from get, or nil when one of them has no
// encoding (an item not built by podItem or ctrItem), which the caller
// then marshals the usual way. An empty answer is nil too: its wire form
// is empty.
func (l *listConfigs) encodeItems(n int, item func(int) any, get func(int) *[]byte) *[]byte {
	if n == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	size := 0
	for i := range n {
		enc, ok := l.encoded[item(i)]
		if !ok {
			return nil
		}
		size += protowire.SizeTag(listItemsField) + protowire.SizeBytes(len(enc))
	}
	buf := get(size)
	b := (*buf)[:0]
	for i := range n {
		b = protowire.AppendTag(b, listItemsField, protowire.BytesType)
		b = protowire.AppendBytes(b, l.encoded[item(i)])
	}
	*buf = b
	return buf
}

// remember keeps it's encoding and drops old's (the item it replaces; a
// nil pointer when none). The caller holds l.mu.
func (l *listConfigs) remember(old, it gproto.Message) {
	delete(l.encoded, old)
	if enc, err := gproto.Marshal(it); err == nil {
		l.encoded[it] = enc
	}
}
