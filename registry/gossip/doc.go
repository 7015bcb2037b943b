// Package gossip joins agents into a cluster over hashicorp/memberlist and
// replicates the catalog between them, with no central server.
//
// It owns the memberlist delegate, the gossip port's transport (UDP and TCP,
// transport.go, with the limits of guard.go), the broadcasts of this node's
// changed entries (one service, one check, the node record), push/pull
// anti-entropy of whole node states, the digest repair of missed broadcasts
// and members (repair.go), membership events (join, leave, failure, reaping),
// the encryption key, and Consul's user events (events.go), which are
// broadcast once by every node and kept, not merged. Merging is the registry's: an entry's owner is its
// only writer, and the higher version wins, so order does not matter.
//
// Memberlist callbacks never block: they copy what they got into an inbox
// and signal the one goroutine that applies it (memberlist #237 is what
// blocking there does). The ping delegate (coordinate.go) skips the inbox:
// it updates this agent's Vivaldi network coordinate from each ping's round
// trip with arithmetic and short locks only.
package gossip
