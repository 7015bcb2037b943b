// Package docker registers this node's Docker containers in the catalog, as
// gliderlabs/registrator does next to a Consul agent: a Watcher lists the
// running containers at start, follows the engine's events (start registers;
// kill with a stop signal, die, stop, pause and destroy deregister), resyncs
// periodically, and removes registrations whose container is gone. Services
// are named and tagged by Registrator's conventions (SERVICE_NAME,
// SERVICE_TAGS, SERVICE_<port>_NAME, SERVICE_CHECK_HTTP, ... from the
// environment or, winning, from labels), so existing docker run lines keep
// working.
//
// The package owns its small client of the Engine API (/_ping,
// /containers/json, /containers/{id}/json and the streaming /events) and the
// services of source registry.SourceDocker. The watcher only reads from the
// Docker socket: it never creates, starts, stops or changes a container. It
// must not touch registrations of any other source, and it runs no checks
// itself: the health package picks up the checks it registers from the
// catalog. Exec is the one writer: it runs the command of a docker check
// (DockerContainerID) inside its container through the exec API, for the
// health package, which takes it as its DockerExec.
package docker
