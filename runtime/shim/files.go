package shim

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/macvz/macvz/internal/atomicfile"
)

// File names inside the sandbox state directory.
const (
	SpecFile   = "spec.json"
	ConfigFile = "shim.json"
	SocketFile = "shim.sock"
	PIDFile    = "shim.pid"
	LogFile    = "shim.log"
	ExitsDir   = "exits"
)

// Config is <dir>/shim.json: how the shim runs the VM described by
// <dir>/spec.json.
type Config struct {
	// Backend names the vm.Driver: "qemu" (linux), "vz" (darwin).
	Backend string `json:"backend"`
	// LogLevel of shim.log: debug, info (default), warn, error.
	LogLevel string `json:"logLevel,omitempty"`
}

// readJSON reads one JSON file into v.
func readJSON(path string, v any) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// writeJSON replaces path with v as JSON (through a temporary file and a
// rename, so readers never see half a file).
func writeJSON(path string, v any, mode os.FileMode) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(b, '\n'), mode)
}
