package main

import (
	"flag"
	"fmt"
	"io"

	consul "github.com/hashicorp/consul/api"
)

// pier operator raft is consul operator raft's list-peers and remove-peer,
// over /v1/operator/raft/{configuration,peer}.

func runOperator(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "raft" {
		return usageError{"give a subcommand: raft list-peers or raft remove-peer"}
	}
	if len(args) == 1 {
		return usageError{"give a raft subcommand: list-peers or remove-peer"}
	}
	switch args[1] {
	case "list-peers":
		return raftListPeers(args[2:], stdout, stderr)
	case "remove-peer":
		return raftRemovePeer(args[2:], stdout, stderr)
	}
	return usageError{fmt.Sprintf("unknown operator raft subcommand %q: want list-peers or remove-peer", args[1])}
}

// raftListPeers prints the Raft configuration as consul operator raft
// list-peers does (its columns up to RaftProtocol: the servers' commit
// indexes are not known to the one that answers), or as JSON.
func raftListPeers(args []string, stdout, stderr io.Writer) error {
	var stale bool
	fs, c, cf, err := apiCommand("operator raft list-peers", args, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&stale, "stale", false, "let any server answer, not only the leader")
	})
	if err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	}
	cc, err := c.consul()
	if err != nil {
		return err
	}
	conf, err := cc.Operator().RaftGetConfiguration(&consul.QueryOptions{AllowStale: stale})
	if err != nil {
		return fmt.Errorf("reading the Raft configuration: %w", c.consulErr(err))
	}
	if cf.format == "json" {
		return printJSON(stdout, conf.Servers)
	}
	tw := newTable(stdout, "Node\tID\tAddress\tState\tVoter\tRaftProtocol")
	for _, s := range conf.Servers {
		state := "follower"
		if s.Leader {
			state = "leader"
		}
		proto := s.ProtocolVersion
		if proto == "" {
			proto = "<=1"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", s.Node, s.ID, s.Address, state, s.Voter, proto)
	}
	return tw.Flush()
}

func raftRemovePeer(args []string, stdout, stderr io.Writer) error {
	var id, address string
	fs, c, _, err := apiCommand("operator raft remove-peer", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&id, "id", "", "the Raft ID of the server to remove")
		fs.StringVar(&address, "address", "", "the Raft address (IP:port) of the server to remove")
	})
	if err != nil {
		return err
	}
	switch {
	case fs.NArg() != 0:
		return usageError{fmt.Sprintf("unexpected arguments %q", fs.Args())}
	case id == "" && address == "":
		return usageError{"an address or id is required for the peer to remove"}
	case id != "" && address != "":
		return usageError{"cannot give both an address and id"}
	}
	cc, err := c.consul()
	if err != nil {
		return err
	}
	if address != "" {
		if err := cc.Operator().RaftRemovePeerByAddress(address, nil); err != nil {
			return fmt.Errorf("removing the peer: %w", c.consulErr(err))
		}
		fmt.Fprintf(stdout, "Removed peer with address %q\n", address)
		return nil
	}
	if err := cc.Operator().RaftRemovePeerByID(id, nil); err != nil {
		return fmt.Errorf("removing the peer: %w", c.consulErr(err))
	}
	fmt.Fprintf(stdout, "Removed peer with id %q\n", id)
	return nil
}
