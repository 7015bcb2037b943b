package raft

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/pier-dev/pier/deploy/eventually"
)

// A register per key, checked by porcupine. Values are unique per write,
// so a cas by ModifyIndex is a cas by the value that index was read with.
type linInput struct {
	Op            string // get, put, cas
	Key           string
	Value, Expect string
}

type linOutput struct {
	Value   string
	Exists  bool
	OK      bool // cas
	Unknown bool // the outcome of a write is not known (leadership lost)
}

type linState struct {
	Value  string
	Exists bool
}

var linModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		for _, op := range h {
			k := op.Input.(linInput).Key
			byKey[k] = append(byKey[k], op)
		}
		var out [][]porcupine.Operation
		for _, ops := range byKey {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return linState{} },
	Step: func(st, in, out any) (bool, any) {
		s, i, o := st.(linState), in.(linInput), out.(linOutput)
		switch i.Op {
		case "get":
			return o.Exists == s.Exists && o.Value == s.Value, s
		case "put":
			return true, linState{Value: i.Value, Exists: true}
		default: // cas
			match := s.Exists && s.Value == i.Expect
			if o.Unknown {
				// Linearized here it applies if it can; linearized after
				// everything (its return is at the end) it is as if it failed.
				if match {
					return true, linState{Value: i.Value, Exists: true}
				}
				return true, s
			}
			if o.OK != match {
				return false, s
			}
			if match {
				return true, linState{Value: i.Value, Exists: true}
			}
			return true, s
		}
	},
	DescribeOperation: func(in, out any) string { return fmt.Sprintf("%+v -> %+v", in, out) },
}

// cluster is a group of servers that a fault injector stops and restarts
// while clients run.
type cluster struct {
	mu      sync.Mutex
	servers []*testServer
}

func (c *cluster) leader() *testServer {
	c.mu.Lock()
	defer c.mu.Unlock()
	return leaderOf(c.servers)
}

// Clients write, cas and read (consistent) a few keys on whichever server
// leads, while the leader is stopped and restarted over and over; the
// history must be linearizable.
func TestLinearizableUnderLeaderFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("a few seconds of load and failovers")
	}
	dir := t.TempDir()
	c := &cluster{}
	var members []Server
	for i := range 3 {
		s := startServer(t, Config{ID: fmt.Sprintf("l%d", i), Bind: "127.0.0.1:0", DataDir: filepath.Join(dir, fmt.Sprint(i)), ApplyTimeout: 2 * time.Second})
		c.servers = append(c.servers, s)
		members = append(members, Server{ID: s.n.ID(), Address: s.n.Addr(), Voter: true})
	}
	for _, s := range c.servers {
		s.n.Bootstrap(members)
	}
	eventually.True(t, 10*time.Second, "a leader", func() bool { return c.leader() != nil })

	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	const runFor = 4 * time.Second
	var (
		hmu     sync.Mutex
		history []porcupine.Operation
		pending []porcupine.Operation // uncertain writes: they return at the end
		counts  = map[string]int{}
	)
	record := func(op porcupine.Operation, kind string) {
		hmu.Lock()
		defer hmu.Unlock()
		if op.Output.(linOutput).Unknown {
			pending = append(pending, op)
		} else {
			history = append(history, op)
		}
		counts[kind]++
	}
	var wg sync.WaitGroup
	for client := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(client), 7))
			seq := 0
			lastSeen := map[string]*KVEntry{}
			for time.Since(start) < runFor {
				l := c.leader()
				if l == nil {
					time.Sleep(5 * time.Millisecond)
					continue
				}
				key := []string{"a", "b", "c"}[rng.IntN(3)]
				call := now()
				switch r := rng.IntN(10); {
				case r < 4: // read
					st, err := l.n.ConsistentState()
					if err != nil {
						continue // answered nothing: no effect to check
					}
					e, ok := st.KV(key)
					out := linOutput{Exists: ok}
					if ok {
						out.Value = string(e.Value)
						lastSeen[key] = e
					}
					record(porcupine.Operation{ClientId: client, Input: linInput{Op: "get", Key: key}, Call: call, Output: out, Return: now()}, "get")
				case r < 7: // put
					seq++
					v := fmt.Sprintf("c%d-%d", client, seq)
					res, err := l.n.KV(KVOp{Verb: KVSet, Key: key, Value: []byte(v)})
					in := linInput{Op: "put", Key: key, Value: v}
					switch {
					case errors.Is(err, ErrUncertain):
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: linOutput{Unknown: true}}, "uncertain")
					case err == nil && res.OK:
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: linOutput{}, Return: now()}, "put")
					}
				default: // cas against the last value this client read
					seen := lastSeen[key]
					if seen == nil {
						continue
					}
					seq++
					v := fmt.Sprintf("c%d-%d", client, seq)
					res, err := l.n.KV(KVOp{Verb: KVCAS, Key: key, Value: []byte(v), Index: seen.ModifyIndex})
					in := linInput{Op: "cas", Key: key, Value: v, Expect: string(seen.Value)}
					switch {
					case errors.Is(err, ErrUncertain):
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: linOutput{Unknown: true}}, "uncertain")
					case err == nil:
						record(porcupine.Operation{ClientId: client, Input: in, Call: call, Output: linOutput{OK: res.OK}, Return: now()}, "cas")
					}
				}
			}
		}()
	}
	// The fault injector: stop whoever leads, let the others elect, bring
	// it back from its data dir.
	failovers := 0
	for time.Since(start) < runFor-500*time.Millisecond {
		time.Sleep(600 * time.Millisecond)
		l := c.leader()
		if l == nil {
			continue
		}
		l.stop()
		time.Sleep(300 * time.Millisecond)
		back := startServer(t, l.cfg)
		c.mu.Lock()
		for i, s := range c.servers {
			if s == l {
				c.servers[i] = back
			}
		}
		c.mu.Unlock()
		failovers++
	}
	wg.Wait()
	end := now() + 1
	for _, op := range pending {
		op.Return = end
		history = append(history, op)
	}
	t.Logf("%d failovers; operations: %v", failovers, counts)
	if counts["put"] == 0 || counts["get"] == 0 || counts["cas"] == 0 || failovers == 0 {
		t.Fatalf("too little happened to check: %v, %d failovers", counts, failovers)
	}
	switch porcupine.CheckOperationsTimeout(linModel, history, time.Minute) {
	case porcupine.Illegal:
		t.Fatalf("the history of %d operations is not linearizable", len(history))
	case porcupine.Unknown:
		t.Fatalf("the checker timed out on %d operations", len(history))
	}
}

// The checker itself: a stale read fails it.
func TestLinearizabilityCheckerCatchesStaleRead(t *testing.T) {
	h := []porcupine.Operation{
		{Input: linInput{Op: "put", Key: "a", Value: "1"}, Call: 0, Output: linOutput{}, Return: 10},
		{Input: linInput{Op: "put", Key: "a", Value: "2"}, Call: 20, Output: linOutput{}, Return: 30},
		{Input: linInput{Op: "get", Key: "a"}, Call: 40, Output: linOutput{Value: "1", Exists: true}, Return: 50},
	}
	if porcupine.CheckOperations(linModel, h) {
		t.Fatal("a read of an overwritten value passed")
	}
	h[2].Output = linOutput{Value: "2", Exists: true}
	if !porcupine.CheckOperations(linModel, h) {
		t.Fatal("a correct history failed")
	}
	// A cas that says it failed although the value matched fails it.
	h = append(h, porcupine.Operation{Input: linInput{Op: "cas", Key: "a", Value: "3", Expect: "2"}, Call: 60, Output: linOutput{OK: false}, Return: 70})
	if porcupine.CheckOperations(linModel, h) {
		t.Fatal("a wrongly failed cas passed")
	}
}
