package api

import (
	"bytes"
	"context"
	"net/http"
	"reflect"
	"testing"
)

// FuzzForwardFrame: a frame's payload, as a server's port or an agent
// reads it from the network, decodes to a request or an answer or is
// refused, never a panic; and what encodes decodes back the same.
func FuzzForwardFrame(f *testing.F) {
	h := http.Header{"X-Consul-Token": {"t"}, "Content-Type": {"application/json"}}
	f.Add(encodeRequest(7, "PUT", "/v1/kv/a?cas=3", h, []byte("value"))[4:])
	f.Add(encodeAnswer(7, 200, h, []byte("true"))[4:])
	f.Add([]byte{1, 3, 'P', 'U', 'T', 1, '/', 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if id, r, err := decodeRequest(context.Background(), b, "127.0.0.1:1", "127.0.0.1:2"); err == nil {
			var body bytes.Buffer
			body.ReadFrom(r.Body)
			again := encodeRequest(id, r.Method, r.RequestURI, r.Header, body.Bytes())[4:]
			id2, r2, err := decodeRequest(context.Background(), again, "127.0.0.1:1", "127.0.0.1:2")
			if err != nil || id2 != id || r2.Method != r.Method || r2.RequestURI != r.RequestURI || !reflect.DeepEqual(r2.Header, r.Header) || r2.ContentLength != int64(body.Len()) {
				t.Fatalf("a request did not survive encoding: %v", err)
			}
		}
		if id, a, err := decodeAnswer(b); err == nil {
			again := encodeAnswer(id, a.status, a.header, a.body)[4:]
			id2, a2, err := decodeAnswer(again)
			if err != nil || id2 != id || a2.status != a.status || !reflect.DeepEqual(a2.header, a.header) || !bytes.Equal(a2.body, a.body) {
				t.Fatalf("an answer did not survive encoding: %v", err)
			}
		}
	})
}
