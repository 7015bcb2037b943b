package main

import "github.com/pier-dev/pier/registry/api"

// mergeAPITLS takes the HTTPS API's settings from a config file, under
// Consul's names (ports.https is merged with the other ports).
func mergeAPITLS(t *api.TLS, fc *fileConfig) {
	fileSets(&t.CAFile, fc.CAFile)
	fileSets(&t.CertFile, fc.CertFile)
	fileSets(&t.KeyFile, fc.KeyFile)
	fileSets(&t.VerifyIncoming, fc.VerifyIncoming)
}
