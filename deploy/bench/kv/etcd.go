package main

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// etcd is one member reached through etcd's own Go client (one gRPC
// connection, which multiplexes every client goroutine's requests).
type etcd struct {
	c *clientv3.Client
}

func newEtcd(endpoint string) (*etcd, error) {
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, err
	}
	return &etcd{c: c}, nil
}

func (e *etcd) close() { e.c.Close() }

func (e *etcd) put(ctx context.Context, key string, val []byte) error {
	_, err := e.c.Put(ctx, key, string(val))
	return err
}

// get is linearizable: etcd's Get is unless WithSerializable is given.
func (e *etcd) get(ctx context.Context, key string) (int64, error) {
	r, err := e.c.Get(ctx, key)
	if err != nil || len(r.Kvs) == 0 {
		return 0, err
	}
	return r.Kvs[0].ModRevision, nil
}

// cas writes if the key's ModRevision is still rev; 0 means absent, as
// etcd compares an absent key's ModRevision as 0.
func (e *etcd) cas(ctx context.Context, key string, val []byte, rev int64) (bool, error) {
	r, err := e.c.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(clientv3.OpPut(key, string(val))).
		Commit()
	if err != nil {
		return false, err
	}
	return r.Succeeded, nil
}

// etcdLeader asks every member for its status and returns the one whose
// member ID is the leader the first one names.
func etcdLeader(ctx context.Context, endpoints []string) (int, string, bool, error) {
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return -1, "", false, err
	}
	defer c.Close()
	ids := make([]uint64, len(endpoints))
	leaders := make([]uint64, len(endpoints))
	for i, ep := range endpoints {
		s, err := c.Status(ctx, ep)
		if err != nil {
			return -1, "", false, fmt.Errorf("%s: %w", ep, err)
		}
		ids[i], leaders[i] = s.Header.MemberId, s.Leader
	}
	agree := true
	for _, l := range leaders {
		agree = agree && l == leaders[0]
	}
	for i, id := range ids {
		if id == leaders[0] && id != 0 {
			return i, endpoints[i], agree, nil
		}
	}
	return -1, "", agree, fmt.Errorf("leader %x is none of the members %x", leaders[0], ids)
}
