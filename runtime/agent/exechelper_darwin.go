package agent

import "errors"

// loadExecHelper: macOS guests start processes without a helper.
func loadExecHelper(path string) (string, error) {
	return "", errors.New("the exec helper is Linux-only")
}
