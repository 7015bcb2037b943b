module github.com/pier-dev/pier

go 1.26.8

require (
	github.com/google/btree v1.1.3
	golang.org/x/sync v0.25.0
	sigs.k8s.io/yaml v1.6.0
)

require go.yaml.in/yaml/v2 v2.4.2 // indirect
