//go:build !unix

package health

import "os/exec"

// killGroup: without process groups, cancellation kills the script only.
func killGroup(cmd *exec.Cmd) {}
