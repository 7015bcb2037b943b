package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"

	"github.com/pier-dev/pier/registry"
	"github.com/pier-dev/pier/registry/acl"
	"github.com/pier-dev/pier/registry/raft"
)

// Consul's /v1/txn, KV verbs only: the operations apply all or none
// through one Raft entry; a transaction of reads only is answered from the
// state as a read (?stale and ?consistent apply).

// maxTxnOps bounds a transaction (Consul's was 64 until 1.x raised it to
// 128; pier keeps 64).
const maxTxnOps = 64

func (s *Server) txnRoutes() {
	s.raftWrites("/v1/txn", s.txn, acl.Anyone) // each operation is checked against the key rules
}

// txnOp is one operation of Consul's TxnOps.
type txnOp struct {
	KV      *txnKVOp
	Node    json.RawMessage
	Service json.RawMessage
	Check   json.RawMessage
}

type txnKVOp struct {
	Verb      string
	Key       string
	Value     []byte
	Flags     uint64
	Index     uint64
	Session   string
	Namespace string
	Partition string
}

// txnBodyError is a refused body: its status and one line.
type txnBodyError struct {
	code int
	msg  string
}

func (e *txnBodyError) Error() string { return e.msg }

func txnBad(code int, format string, args ...any) *txnBodyError {
	return &txnBodyError{code, fmt.Sprintf(format, args...)}
}

// isTxnWrite reports whether a verb changes the store.
func isTxnWrite(verb string) bool {
	switch verb {
	case raft.KVSet, raft.KVCAS, raft.KVLock, raft.KVUnlock, raft.KVDelete, raft.KVDeleteTree, raft.KVDeleteCAS:
		return true
	}
	return false
}

// parseTxn reads a /v1/txn body: the KV operations and how many write.
// A malformed operation is a 400 that names its index, more than
// maxTxnOps or a value over the KV limit a 413.
func parseTxn(body []byte) ([]raft.KVOp, int, *txnBodyError) {
	var in []txnOp
	if err := json.Unmarshal(body, &in); err != nil {
		return nil, 0, txnBad(http.StatusBadRequest, "Failed to parse body: %v", err)
	}
	if len(in) > maxTxnOps {
		return nil, 0, txnBad(http.StatusRequestEntityTooLarge, "Transaction contains too many operations (%d > %d)", len(in), maxTxnOps)
	}
	ops := make([]raft.KVOp, 0, len(in))
	writes := 0
	for i, op := range in {
		// consul/api sends the other kinds as null.
		for _, o := range []struct {
			kind string
			raw  json.RawMessage
		}{{"Node", op.Node}, {"Service", op.Service}, {"Check", op.Check}} {
			if len(o.raw) > 0 && string(o.raw) != "null" {
				return nil, 0, txnBad(http.StatusBadRequest, "op %d: %s operations are not supported by pier yet (KV only)", i, o.kind)
			}
		}
		if op.KV == nil {
			return nil, 0, txnBad(http.StatusBadRequest, "op %d: no operation (KV expected)", i)
		}
		kv := op.KV
		switch kv.Verb {
		case raft.KVSet, raft.KVCAS, raft.KVLock, raft.KVUnlock, raft.KVGet, raft.KVGetTree, raft.KVCheckIndex,
			raft.KVCheckSession, raft.KVCheckNotExists, raft.KVDelete, raft.KVDeleteTree, raft.KVDeleteCAS:
		case "":
			return nil, 0, txnBad(http.StatusBadRequest, "op %d: KV.Verb: missing", i)
		default:
			return nil, 0, txnBad(http.StatusBadRequest, "op %d: KV.Verb: unknown KV operation %q", i, kv.Verb)
		}
		if kv.Verb != raft.KVGetTree && kv.Verb != raft.KVDeleteTree {
			if err := registry.ValidKey(kv.Key); err != nil {
				return nil, 0, txnBad(http.StatusBadRequest, "op %d: KV.Key: %v", i, err.(*registry.FieldError).Msg)
			}
		}
		if reserved(kv.Key) {
			return nil, 0, txnBad(http.StatusBadRequest, "op %d: KV.Key: keys under %s are reserved for the agent", i, registry.ReservedKVPrefix)
		}
		if len(kv.Value) > registry.MaxKVValue {
			return nil, 0, txnBad(http.StatusRequestEntityTooLarge, "op %d: Value for key %q is too large (%d > %d bytes)", i, kv.Key, len(kv.Value), registry.MaxKVValue)
		}
		switch kv.Verb {
		case raft.KVLock, raft.KVUnlock, raft.KVCheckSession:
			if kv.Session == "" {
				return nil, 0, txnBad(http.StatusBadRequest, "op %d: KV.Session: missing for %s", i, kv.Verb)
			}
		}
		if isTxnWrite(kv.Verb) {
			writes++
		}
		ops = append(ops, raft.KVOp{Verb: kv.Verb, Key: kv.Key, Value: kv.Value, Flags: kv.Flags, Index: kv.Index, Session: kv.Session})
	}
	return ops, writes, nil
}

// txnResponse is Consul's TxnResponse.
type txnResponse struct {
	Results []txnResult
	Errors  []raft.TxnError
}

type txnResult struct {
	KV kvPair
}

func (s *Server) txn(w http.ResponseWriter, r *http.Request) {
	if !s.localDC(w, r) {
		return
	}
	// The body is checked before it goes anywhere; a forward carries it
	// on untouched.
	var n *raft.Node
	var st *raft.State
	body, ok := s.peekTxn(w, r)
	if !ok {
		return
	}
	ops, writes, berr := parseTxn(body)
	if berr != nil {
		httpError(w, berr.code, "%s", berr.msg)
		return
	}
	if writes == 0 {
		if st, n, ok = s.raftRead(w, r); !ok {
			return
		}
	} else if n, ok = s.raftWrite(w, r); !ok {
		return
	}
	p := acl.PolicyOf(r)
	var errs []raft.TxnError
	for i, op := range ops {
		if !txnAllowed(p, op) {
			errs = append(errs, raft.TxnError{OpIndex: i, What: "Permission denied"})
		} else if op.Verb == raft.KVLock && n.LockDelayed(op.Key) {
			errs = append(errs, raft.TxnError{OpIndex: i, What: fmt.Sprintf("failed to lock key %q due to lock delay", op.Key)})
		}
	}
	if len(errs) > 0 {
		txnAnswer(w, r, nil, errs)
		return
	}
	var entries []*raft.KVEntry
	if writes == 0 {
		entries, errs = txnRead(st, ops)
	} else {
		if err := s.kvFull(n.State(), ops); err != nil {
			writeError(w, "Invalid KV write", err)
			return
		}
		res, err := n.Txn(ops)
		if !applied(w, res, err) {
			return
		}
		entries, errs = res.Entries, res.Errors
	}
	// A get-tree answers only what the token may read, as Consul, and
	// never the agent's own keys (the ACL store, with its secrets).
	kept := entries[:0:0]
	for _, e := range entries {
		if !reserved(e.Key) && (p == nil || p.KeyRead(e.Key)) {
			kept = append(kept, e)
		}
	}
	entries = kept
	txnAnswer(w, r, entries, errs)
}

// peekTxn reads the body up to the limit and puts it back, so that a
// forward can send it on.
func (s *Server) peekTxn(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, ok := s.readBody(w, r)
	if ok {
		r.Body = io.NopCloser(bytes.NewReader(b))
		r.ContentLength = int64(len(b))
	}
	return b, ok
}

// txnAllowed applies the key rules to one operation, as Consul's.
func txnAllowed(p *acl.Policy, op raft.KVOp) bool {
	if p == nil {
		return true
	}
	switch op.Verb {
	case raft.KVGet, raft.KVCheckIndex, raft.KVCheckSession:
		return p.KeyRead(op.Key)
	case raft.KVGetTree:
		return true // filtered
	}
	return p.KeyWrite(op.Key)
}

// txnAnswer writes Consul's answer: 200 with the results, or 409 with the
// errors.
func txnAnswer(w http.ResponseWriter, r *http.Request, entries []*raft.KVEntry, errs []raft.TxnError) {
	if len(errs) > 0 {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusConflict)
		json.NewEncoder(w).Encode(txnResponse{Errors: errs})
		return
	}
	out := txnResponse{Results: make([]txnResult, 0, len(entries))}
	for _, e := range entries {
		out.Results = append(out.Results, txnResult{KV: toKVPair(e)})
	}
	writeJSON(w, r, out)
}

// txnRead answers a transaction of reads from one state, with the state
// machine's messages.
func txnRead(st *raft.State, ops []raft.KVOp) ([]*raft.KVEntry, []raft.TxnError) {
	var out []*raft.KVEntry
	var errs []raft.TxnError
	fail := func(i int, format string, args ...any) {
		errs = append(errs, raft.TxnError{OpIndex: i, What: fmt.Sprintf(format, args...)})
	}
	stripped := func(e *raft.KVEntry) {
		c := *e
		c.Value = nil
		out = append(out, &c)
	}
	for i, op := range ops {
		e, ok := st.KV(op.Key)
		switch op.Verb {
		case raft.KVGet:
			if ok {
				out = append(out, e)
			} else {
				fail(i, "key %q doesn't exist", op.Key)
			}
		case raft.KVGetTree:
			out = append(out, st.KVList(op.Key)...)
		case raft.KVCheckIndex:
			switch {
			case !ok:
				fail(i, "failed to check index, key %q doesn't exist", op.Key)
			case e.ModifyIndex != op.Index:
				fail(i, "failed index check for key %q, current modify index %d != %d", op.Key, e.ModifyIndex, op.Index)
			default:
				stripped(e)
			}
		case raft.KVCheckSession:
			switch {
			case !ok:
				fail(i, "failed to check session, key %q doesn't exist", op.Key)
			case e.Session != op.Session:
				fail(i, "failed session check for key %q, current session %q != %q", op.Key, e.Session, op.Session)
			default:
				stripped(e)
			}
		case raft.KVCheckNotExists:
			if ok {
				fail(i, "key %q exists", op.Key)
			}
		}
	}
	if len(errs) > 0 {
		out = nil
	}
	return out, errs
}
