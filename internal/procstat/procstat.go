// Package procstat reads a process's CPU times from its /proc/PID/stat
// line: the host's (a VM process) or a guest's, read back through an exec.
package procstat

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// CPUTicks returns the utime and stime of a /proc/PID/stat line (fields
// 14 and 15), in clock ticks (USER_HZ). comm (field 2) is in parentheses
// and may contain anything, spaces and parentheses included: the fields
// after its last closing parenthesis start at field 3 (state).
func CPUTicks(stat []byte) (utime, stime uint64, err error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, errors.New("no command in parentheses")
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("%d fields after the command, want at least 13", len(f))
	}
	utime, err1 := strconv.ParseUint(string(f[11]), 10, 64)
	stime, err2 := strconv.ParseUint(string(f[12]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, 0, err
	}
	return utime, stime, nil
}
