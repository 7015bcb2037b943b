package registry

// SourceDocker marks the registrations that registry/docker makes for the
// containers of this node. They are not persisted: the watcher derives them
// again from the engine at every start, so a container that went away while
// the agent was down is simply not registered again. The watcher only ever
// changes or removes services of this source, so a service registered
// through the API under the same ID is never taken over or deleted by it.
const SourceDocker Source = "docker"
