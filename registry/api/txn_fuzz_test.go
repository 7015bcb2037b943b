package api

import (
	"encoding/json"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// FuzzTxnBody: /v1/txn's body parser, which reads what any client sends
// before a forward or a Raft entry. A refusal is a 400 or 413 with one
// line, naming an operation that exists; an accepted body holds at most
// maxTxnOps known KV operations, and writing them back as Consul's body
// reads the same operations again.
func FuzzTxnBody(f *testing.F) {
	for _, seed := range []string{
		`[{"KV":{"Verb":"set","Key":"a","Value":"aGk="}}]`,
		`[{"KV":{"Verb":"cas","Key":"a","Index":3}},{"KV":{"Verb":"get-tree","Key":""}}]`,
		`[{"KV":{"Verb":"lock","Key":"l","Session":"s"}},{"Node":null,"Service":null,"Check":null,"KV":{"Verb":"check-session","Key":"l","Session":"s"}}]`,
		`[{"Node":{"Verb":"set"}}]`,
		`[{"kv":{"verb":"delete-tree","key":"x/"}}]`,
		`[{}]`, `{}`, `[`, `null`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ops, writes, berr := parseTxn(body)
		if berr != nil {
			if berr.code != http.StatusBadRequest && berr.code != http.StatusRequestEntityTooLarge {
				t.Fatalf("code %d for %q", berr.code, body)
			}
			if berr.msg == "" || strings.Contains(berr.msg, "\n") {
				t.Fatalf("message %q for %q", berr.msg, body)
			}
			if rest, ok := strings.CutPrefix(berr.msg, "op "); ok {
				n, err := strconv.Atoi(rest[:strings.IndexByte(rest, ':')])
				var list []json.RawMessage
				if err != nil || json.Unmarshal(body, &list) != nil || n >= len(list) {
					t.Fatalf("%q names an operation the body does not have: %q", berr.msg, body)
				}
			}
			return
		}
		if len(ops) > maxTxnOps {
			t.Fatalf("%d operations accepted", len(ops))
		}
		w := 0
		type kvOp struct {
			Verb, Key string
			Value     []byte
			Flags     uint64
			Index     uint64
			Session   string
		}
		var again []map[string]kvOp
		for _, op := range ops {
			if isTxnWrite(op.Verb) {
				w++
			}
			again = append(again, map[string]kvOp{"KV": {op.Verb, op.Key, op.Value, op.Flags, op.Index, op.Session}})
		}
		if w != writes {
			t.Fatalf("writes = %d, counted %d", writes, w)
		}
		b, err := json.Marshal(again)
		if err != nil {
			t.Fatal(err)
		}
		ops2, writes2, berr := parseTxn(b)
		if berr != nil || writes2 != writes || len(ops2) != len(ops) {
			t.Fatalf("written back %s: %v", b, berr)
		}
		for i := range ops {
			a, c := ops[i], ops2[i]
			if len(a.Value) == 0 && len(c.Value) == 0 {
				a.Value, c.Value = nil, nil
			}
			if !reflect.DeepEqual(a, c) {
				t.Fatalf("op %d read back as %+v, was %+v", i, c, a)
			}
		}
	})
}
