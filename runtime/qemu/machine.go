package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/macvz/macvz/internal/atomicfile"
	"github.com/macvz/macvz/internal/procstat"
	"github.com/macvz/macvz/runtime/boundedlog"
	"github.com/macvz/macvz/runtime/vm"
)

// Timeouts for steps that have no caller deadline of their own.
const (
	qmpConnectTimeout = 30 * time.Second // QEMU up to its QMP greeting
	qmpCommandTimeout = 5 * time.Second  // one control command (stop, quit, powerdown)
	quitWait          = 5 * time.Second  // QEMU exiting after "quit"
	eventDrainWait    = 2 * time.Second  // the QMP reader catching up after QEMU exited
)

// How Stop escalated, so the exit reason can say what happened.
const (
	stopNone = iota
	stopPowerdown
	stopQuit
	stopKill
)

type machine struct {
	spec *vm.Spec
	cfg  config
	args []string

	done chan struct{}
	tail tailBuffer

	mu       sync.Mutex
	state    vm.State
	starting bool
	proc     *os.Process
	qmp      *qmpConn
	exit     vm.Exit
	shutdown string // reason of QEMU's SHUTDOWN event
	stopMode int
	paused   bool // by Save
	grace    time.Duration
	dirFile  *os.File // Dir, kept open when socket paths need /proc/self/fd
	// ramBacking is what the guest RAM lives in (ramBackingFor); ram is
	// the memfd when that is one, which SaveRAMFile reads; closed when
	// QEMU exits.
	ramBacking ramBacking
	ram        *os.File
	// agentLine watches the console for the agent's first line.
	agentLine vm.ConsoleWatch
}

var (
	_ vm.Machine       = (*machine)(nil)
	_ vm.Balloon       = (*machine)(nil)
	_ vm.RAMFileSaver  = (*machine)(nil)
	_ vm.ConsoleMarker = (*machine)(nil)
)

func newMachine(spec *vm.Spec, c config) *machine {
	arch := guestArch(spec)
	ram, _ := ramBackingFor(spec, arch, machineFor(arch, c.machine))
	return &machine{
		spec:       spec,
		cfg:        c,
		args:       Args(spec, c.accel, c.machine, c.firmware),
		done:       make(chan struct{}),
		state:      vm.StateCreated,
		ramBacking: ram,
	}
}

func (m *machine) path(name string) string { return filepath.Join(m.spec.Dir, name) }

// Start implements vm.Machine. It returns once QEMU answers on QMP (a cold
// boot) or once the saved state is loaded and the VM resumed (a restore);
// it does not wait for the guest.
func (m *machine) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.state != vm.StateCreated || m.starting {
		st := m.state
		m.mu.Unlock()
		return precondition("machine %s is %s; a machine starts once", m.spec.ID, st)
	}
	m.starting = true
	m.mu.Unlock()

	err := m.start(ctx)
	if err != nil {
		m.abortStart()
		<-m.done
		reason := m.Exit().Reason
		if errors.Is(err, errExited) || errors.Is(err, errQMPClosed) {
			// QEMU's own last words say it best.
			what := "starting VM " + m.spec.ID
			if m.spec.RestoreFrom != "" {
				what += " from " + m.spec.RestoreFrom
			}
			return fmt.Errorf("%s: %s", what, reason)
		}
		if reason != "" && !strings.Contains(err.Error(), reason) {
			err = fmt.Errorf("%w (%s)", err, reason)
		}
		return fmt.Errorf("starting VM %s: %w", m.spec.ID, err)
	}
	m.mu.Lock()
	m.starting = false
	if m.state == vm.StateCreated {
		m.state = vm.StateRunning
	}
	m.mu.Unlock()
	return nil
}

func (m *machine) start(ctx context.Context) error {
	for _, name := range []string{AgentSocket, QMPSocket, PIDFile} {
		os.Remove(m.path(name))
	}
	// QEMU's own messages (warnings a guest can provoke) and the guest's
	// console are bounded logs: what the guest does cannot fill the host.
	logf, err := boundedlog.Open(m.path(LogFile), m.spec.ConsoleLogMax)
	if err != nil {
		m.failEarly(err)
		return err
	}
	fmt.Fprintf(logf, "%s starting: %s %s\n", time.Now().UTC().Format(time.RFC3339Nano), m.cfg.binary, strings.Join(m.args, " "))
	files, err := m.inheritedFiles()
	if err != nil {
		logf.Close()
		m.failEarly(err)
		return err
	}

	cmd := command(m.cfg.binary, m.args)
	cmd.Dir = m.spec.Dir
	out := io.MultiWriter(logf, &m.tail)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = sysProcAttr()
	cmd.ExtraFiles = files.extra

	started := make(chan error, 1)
	go m.run(cmd, logf, files, started)
	if err := <-started; err != nil {
		return err
	}

	q, err := m.connectQMP(ctx)
	if err != nil {
		return err
	}
	if m.spec.RestoreFrom != "" {
		ramFile := m.ramBacking == ramMapped
		if ramFile {
			// A state without its RAM (the RAM file is mapped): the load
			// must skip the RAM block as the save did.
			if err := setIgnoreShared(ctx, q, true); err != nil {
				return fmt.Errorf("restoring from %s: %w", m.spec.RestoreFrom, err)
			}
			if _, err := q.execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + strconv.Itoa(stateFD)}); err != nil {
				return fmt.Errorf("restoring from %s: %w", m.spec.RestoreFrom, err)
			}
		}
		if err := m.waitIncoming(ctx, q); err != nil {
			return err
		}
		if ramFile {
			// Off again, as after a save: a checkpoint of this VM is one
			// stream with its RAM (which, privately mapped, would go into
			// it anyway).
			if err := setIgnoreShared(ctx, q, false); err != nil {
				return fmt.Errorf("restoring from %s: %w", m.spec.RestoreFrom, err)
			}
		}
		if _, err := q.execute(ctx, "cont", nil); err != nil {
			return err
		}
	}
	return nil
}

// setIgnoreShared sets QEMU's x-ignore-shared migration capability: a
// migration leaves out the RAM of shared memory backends (the memfd a
// savable VM's RAM is in), which a RAM file carries instead.
func setIgnoreShared(ctx context.Context, q *qmpConn, on bool) error {
	_, err := q.execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": on}},
	})
	return err
}

// failEarly ends a machine whose QEMU never started.
func (m *machine) failEarly(err error) {
	m.finish(vm.Exit{At: time.Now(), Reason: "qemu did not start: " + err.Error()})
}

// run starts QEMU and waits for it, on one goroutine locked to its OS
// thread. Pdeathsig (see sysProcAttr) fires when the *thread* that forked
// the child exits, not the process: Go may end an OS thread whenever a
// goroutine that locked it exits without unlocking (netns helpers do this
// on purpose), and any unlocked goroutine may happen to run on such a
// thread. Locking the thread for the child's whole life guarantees the
// forking thread lives exactly as long as we care about the child, and
// costs nothing extra: cmd.Wait blocks a thread in wait4 anyway.
func (m *machine) run(cmd *exec.Cmd, logf io.Closer, files *inherited, started chan<- error) {
	lockOSThread()
	defer unlockOSThread()
	err := cmd.Start()
	files.started()
	if err != nil {
		logf.Close()
		files.console.Close()
		m.failEarly(err)
		started <- err
		return
	}
	go files.copyConsole()
	m.mu.Lock()
	m.proc = cmd.Process
	if m.stopMode >= stopKill { // Stop came first
		cmd.Process.Kill()
	}
	m.mu.Unlock()
	// Written here, before Wait, so that exited's removal always comes
	// after; a failure only loses the convenience file.
	atomicfile.WriteFile(m.path(PIDFile), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644)
	started <- nil
	werr := cmd.Wait()
	logf.Close()
	m.exited(cmd.ProcessState, werr)
}

func (m *machine) connectQMP(ctx context.Context) (*qmpConn, error) {
	ctx, cancel := context.WithTimeout(ctx, qmpConnectTimeout)
	defer cancel()
	path := m.path(QMPSocket)
	for {
		if _, err := os.Stat(path); err == nil {
			q, err := m.dialQMP(ctx)
			if err == nil {
				m.mu.Lock()
				if m.state == vm.StateStopped {
					m.mu.Unlock()
					q.Close()
					return nil, errExited
				}
				m.qmp = q
				m.mu.Unlock()
				return q, nil
			}
		}
		select {
		case <-m.done:
			return nil, errExited
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for QMP on %s: %w", path, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func (m *machine) dialQMP(ctx context.Context) (*qmpConn, error) {
	c, err := m.dial(ctx, QMPSocket)
	if err != nil {
		return nil, err
	}
	q, err := newQMP(ctx, c, m.onEvent)
	if err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// errExited says QEMU exited while Start waited for it.
var errExited = errors.New("qemu exited")

// dial connects to a socket in Dir, through /proc/self/fd when the path
// is too long for sun_path.
func (m *machine) dial(ctx context.Context, name string) (net.Conn, error) {
	path := m.path(name)
	if len(path) > maxSocketPath {
		m.mu.Lock()
		f := m.dirFile
		m.mu.Unlock()
		if f == nil {
			return nil, fmt.Errorf("socket path %s is too long", path)
		}
		path = fmt.Sprintf("/proc/self/fd/%d/%s", f.Fd(), name)
	}
	var d net.Dialer
	return d.DialContext(ctx, "unix", path)
}

func (m *machine) onEvent(e qmpEvent) {
	if e.Event != "SHUTDOWN" {
		return
	}
	var data struct {
		Reason string `json:"reason"`
	}
	json.Unmarshal(e.Data, &data)
	m.mu.Lock()
	if m.shutdown == "" {
		m.shutdown = data.Reason
	}
	m.mu.Unlock()
}

// waitIncoming polls the incoming migration until it has completed.
// A failed load makes QEMU exit, which ends the wait too.
func (m *machine) waitIncoming(ctx context.Context, q *qmpConn) error {
	for {
		st, err := queryMigrate(ctx, q)
		if err != nil {
			return fmt.Errorf("restoring from %s: %w", m.spec.RestoreFrom, err)
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("restoring from %s: migration %s: %s", m.spec.RestoreFrom, st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restoring from %s: %w", m.spec.RestoreFrom, ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}

type migrateStatus struct {
	Status    string `json:"status"`
	ErrorDesc string `json:"error-desc"`
}

func queryMigrate(ctx context.Context, q *qmpConn) (migrateStatus, error) {
	var st migrateStatus
	raw, err := q.execute(ctx, "query-migrate", nil)
	if err != nil {
		return st, err
	}
	err = json.Unmarshal(raw, &st)
	return st, err
}

// abortStart kills a QEMU whose start failed.
func (m *machine) abortStart() {
	m.mu.Lock()
	p := m.proc
	if m.stopMode < stopKill {
		m.stopMode = stopKill
	}
	m.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// exited runs once QEMU has exited: it lets the QMP reader drain the
// last events (SHUTDOWN says why), then records the exit.
func (m *machine) exited(ps *os.ProcessState, werr error) {
	m.mu.Lock()
	q := m.qmp
	m.mu.Unlock()
	if q != nil {
		select {
		case <-q.Done():
		case <-time.After(eventDrainWait):
		}
		q.Close()
	}
	m.mu.Lock()
	reason, clean := m.exitReason(ps, werr)
	m.mu.Unlock()
	os.Remove(m.path(PIDFile))
	m.finish(vm.Exit{At: time.Now(), Reason: reason, Clean: clean})
}

// exitReason explains QEMU's exit; m.mu is held.
func (m *machine) exitReason(ps *os.ProcessState, werr error) (string, bool) {
	hard := "stopped hard after the grace period"
	if m.grace <= 0 {
		hard = "stopped hard (no grace period)"
	}
	last := m.tail.LastLine()
	withLast := func(s string) string {
		if last != "" {
			return s + ": " + last
		}
		return s
	}
	switch m.shutdown {
	case "guest-shutdown":
		return "guest powered off", true
	case "guest-reset":
		return "guest rebooted (a reboot ends the VM)", true
	case "guest-panic":
		return "guest panicked", false
	case "host-qmp-quit":
		if m.paused && m.stopMode == stopQuit {
			return "stopped while paused (after Save)", true
		}
		if m.stopMode >= stopQuit {
			return hard, false
		}
		return "qemu quit on a QMP command", false
	case "":
	default:
		if m.stopMode >= stopQuit {
			return hard, false
		}
		return withLast("qemu shut down (" + m.shutdown + ")"), false
	}
	if ps == nil {
		return withLast(fmt.Sprintf("qemu: %v", werr)), false
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		if ws.Signal() == syscall.SIGKILL && m.stopMode >= stopKill {
			return "killed", false
		}
		return withLast(fmt.Sprintf("qemu killed by signal %s", ws.Signal())), false
	}
	if code := ps.ExitCode(); code != 0 {
		return withLast(fmt.Sprintf("qemu exited with status %d", code)), false
	}
	if m.stopMode >= stopQuit {
		return hard, false
	}
	return "qemu exited", false
}

// finish records the exit and closes Done, once.
func (m *machine) finish(e vm.Exit) {
	m.mu.Lock()
	if m.state == vm.StateStopped {
		m.mu.Unlock()
		return
	}
	m.state = vm.StateStopped
	m.exit = e
	if m.dirFile != nil {
		m.dirFile.Close()
		m.dirFile = nil
	}
	if m.ram != nil {
		m.ram.Close()
		m.ram = nil
	}
	m.mu.Unlock()
	close(m.done)
}

// Stop implements vm.Machine: ACPI power button (QMP system_powerdown),
// up to grace for the guest to power off, then QMP quit, then SIGKILL.
// A grace of 0 skips the power button. Safe to call repeatedly and
// concurrently; a machine that never started just becomes stopped.
func (m *machine) Stop(ctx context.Context, grace time.Duration) error {
	m.mu.Lock()
	switch {
	case m.state == vm.StateStopped:
		m.mu.Unlock()
		return nil
	case m.state == vm.StateCreated && !m.starting:
		m.mu.Unlock()
		m.finish(vm.Exit{At: time.Now(), Reason: "stopped before it started", Clean: true})
		return nil
	}
	q, p, paused := m.qmp, m.proc, m.paused
	if m.stopMode == stopNone {
		m.grace = grace
	}
	m.mu.Unlock()

	// A paused guest cannot react to the power button.
	if grace > 0 && q != nil && !paused {
		m.escalate(stopPowerdown)
		cctx, cancel := context.WithTimeout(ctx, qmpCommandTimeout)
		_, err := q.execute(cctx, "system_powerdown", nil)
		cancel()
		if err == nil {
			t := time.NewTimer(grace)
			select {
			case <-m.done:
				t.Stop()
				return nil
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
			}
		}
	}
	if q != nil {
		m.escalate(stopQuit)
		cctx, cancel := context.WithTimeout(context.Background(), qmpCommandTimeout)
		_, err := q.execute(cctx, "quit", nil)
		cancel()
		if err == nil || errors.Is(err, errQMPClosed) {
			t := time.NewTimer(quitWait)
			select {
			case <-m.done:
				t.Stop()
				return nil
			case <-t.C:
			}
		}
	}
	m.escalate(stopKill)
	if p == nil {
		m.mu.Lock()
		p = m.proc
		m.mu.Unlock()
	}
	if p != nil {
		p.Kill()
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *machine) escalate(mode int) {
	m.mu.Lock()
	if m.stopMode < mode {
		m.stopMode = mode
	}
	m.mu.Unlock()
}

// Done implements vm.Machine.
func (m *machine) Done() <-chan struct{} { return m.done }

// Exit implements vm.Machine.
func (m *machine) Exit() vm.Exit {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.exit
}

// State implements vm.Machine.
func (m *machine) State() vm.State {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// Stats implements vm.Machine from /proc/<pid>/stat (utime + stime) and
// /proc/<pid>/statm (resident pages) of the QEMU process.
func (m *machine) Stats(ctx context.Context) (vm.Stats, error) {
	m.mu.Lock()
	p, st := m.proc, m.state
	m.mu.Unlock()
	if p == nil || st == vm.StateStopped {
		return vm.Stats{}, precondition("machine %s is not running", m.spec.ID)
	}
	return procStats(p.Pid)
}

func procStats(pid int) (vm.Stats, error) {
	var s vm.Stats
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	utime, stime, err := procstat.CPUTicks(stat)
	if err != nil {
		return s, fmt.Errorf("parsing /proc/%d/stat: %w", pid, err)
	}
	s.CPUNanos = (utime + stime) * uint64(time.Second/clockTicks)

	statm, err := os.ReadFile(fmt.Sprintf("/proc/%d/statm", pid))
	if err != nil {
		return s, err
	}
	g := strings.Fields(string(statm))
	if len(g) < 2 {
		return s, fmt.Errorf("parsing /proc/%d/statm", pid)
	}
	rss, err := strconv.ParseUint(g[1], 10, 64)
	if err != nil {
		return s, fmt.Errorf("parsing /proc/%d/statm: %w", pid, err)
	}
	s.MemoryBytes = rss * uint64(os.Getpagesize())
	return s, nil
}

// DialAgent implements vm.Machine: a connection to the host end of the
// guest agent's virtio-serial port. QEMU serves one client at a time on
// that socket: while one connection is open, a second one connects but
// sees no data until the first is closed. The guest side reads EOF while
// no host client is connected, and a guest write blocks until one is.
// The guest learns of connects and disconnects from control messages it
// may not have processed yet (a disconnect just before Save, a quick
// reconnect), so it cannot count on seeing every new connection: the
// host should speak first on a new connection, and the protocol should
// tolerate leftovers of the previous one.
func (m *machine) DialAgent(ctx context.Context) (net.Conn, error) {
	if st := m.State(); st != vm.StateRunning {
		return nil, precondition("machine %s is %s, not running", m.spec.ID, st)
	}
	return m.dial(ctx, AgentSocket)
}

// Save implements vm.Machine: QMP stop, then migrate into a pipe whose
// other end this process copies to path (through path+".tmp", renamed
// once QEMU has written everything). The VM stays paused.
//
// The pipe ("fd:" migration with the write end passed by SCM_RIGHTS to
// QMP getfd) rather than "exec:cat > file": QEMU reports the migration
// completed before its exec'd child has necessarily written the last
// bytes, whereas EOF on our pipe end proves the stream is all there.
func (m *machine) Save(ctx context.Context, path string) error {
	return m.saveState(ctx, path, nil)
}

// SaveRAMFile implements vm.RAMFileSaver: the device state to path as
// Save writes it but without the RAM (x-ignore-shared leaves out the
// memfd it is in), and the RAM, copied from the memfd while the VM is
// paused, to path + vm.RAMFileSuffix. A VM without a memfd saves as Save.
func (m *machine) SaveRAMFile(ctx context.Context, path string) error {
	m.mu.Lock()
	ram := m.ram
	m.mu.Unlock()
	return m.saveState(ctx, path, ram)
}

func (m *machine) saveState(ctx context.Context, path string, ram *os.File) error {
	m.mu.Lock()
	q, st := m.qmp, m.state
	m.mu.Unlock()
	if st != vm.StateRunning || q == nil {
		return precondition("machine %s is %s, not running", m.spec.ID, st)
	}
	if _, err := q.execute(ctx, "stop", nil); err != nil {
		return fmt.Errorf("saving VM %s: %w", m.spec.ID, err)
	}
	m.setPaused(true)
	err := m.save(ctx, q, path, ram != nil)
	if err == nil && ram != nil {
		if err = writeRAMFile(ctx, ram, path+vm.RAMFileSuffix); err != nil {
			os.Remove(path)
		}
	}
	if err != nil {
		// Leave the VM as it was: running. (A 9p share the guest has
		// mounted, for one, makes QEMU refuse to migrate.)
		cctx, cancel := context.WithTimeout(context.Background(), qmpCommandTimeout)
		if _, cerr := q.execute(cctx, "cont", nil); cerr == nil {
			m.setPaused(false)
		}
		cancel()
		return fmt.Errorf("saving VM %s: %w", m.spec.ID, err)
	}
	return nil
}

// Resume implements vm.Machine: QMP cont. After a completed migration
// QEMU has given up its disk images; cont takes them back.
func (m *machine) Resume(ctx context.Context) error {
	m.mu.Lock()
	q, st, paused := m.qmp, m.state, m.paused
	m.mu.Unlock()
	if st != vm.StateRunning || q == nil {
		return precondition("machine %s is %s, not running", m.spec.ID, st)
	}
	if !paused {
		return nil
	}
	if _, err := q.execute(ctx, "cont", nil); err != nil {
		return fmt.Errorf("resuming VM %s: %w", m.spec.ID, err)
	}
	m.setPaused(false)
	return nil
}

func (m *machine) setPaused(p bool) {
	m.mu.Lock()
	m.paused = p
	m.mu.Unlock()
}

func (m *machine) save(ctx context.Context, q *qmpConn, path string, withoutRAM bool) error {
	// The default migration bandwidth limit (32 MiB/s) would make a save
	// of a few hundred MiB take seconds; a paused VM has no reason to
	// throttle.
	if _, err := q.execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": int64(1) << 40}); err != nil {
		return err
	}
	if withoutRAM {
		if err := setIgnoreShared(ctx, q, true); err != nil {
			return err
		}
		// Off again whatever happens: a later Save (a checkpoint) must
		// write the RAM into its stream.
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), qmpCommandTimeout)
			setIgnoreShared(cctx, q, false)
			cancel()
		}()
	}
	tmp := path + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			out.Close()
			os.Remove(tmp)
		}
	}()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	copied := make(chan error, 1)
	go func() {
		buf := make([]byte, 1<<20)
		_, err := io.CopyBuffer(out, pr, buf)
		pr.Close()
		copied <- err
	}()
	_, err = q.executeFD(ctx, "getfd", map[string]any{"fdname": saveFD}, pw)
	pw.Close()
	if err != nil {
		<-copied
		return fmt.Errorf("passing the pipe to qemu: %w", err)
	}
	if _, err := q.execute(ctx, "migrate", map[string]any{"uri": "fd:" + saveFD}); err != nil {
		cctx, cancel := context.WithTimeout(context.Background(), qmpCommandTimeout)
		q.execute(cctx, "closefd", map[string]any{"fdname": saveFD})
		cancel()
		<-copied
		return err
	}
	cancelMigration := func() {
		cctx, cancel := context.WithTimeout(context.Background(), qmpCommandTimeout)
		q.execute(cctx, "migrate_cancel", nil)
		cancel()
		<-copied
	}
	for done := false; !done; {
		st, err := queryMigrate(ctx, q)
		if err != nil {
			if ctx.Err() != nil {
				cancelMigration()
				return ctx.Err()
			}
			<-copied
			return err
		}
		switch st.Status {
		case "completed":
			done = true
		case "failed", "cancelled":
			<-copied
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		default:
			select {
			case <-ctx.Done():
				cancelMigration()
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	// Completed: QEMU closes its end of the pipe right after; the copy
	// reaching EOF proves every byte is in the file.
	select {
	case err = <-copied:
	case <-ctx.Done():
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := out.Sync(); err != nil {
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	ok = true
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// saveFD is the name Save gives its pipe in QEMU (QMP getfd).
const saveFD = "macvz-save"

// needsDirFD reports whether a socket in dir needs the /proc/self/fd
// detour (see socketPath).
func needsDirFD(dir string) bool {
	return socketPath(dir, AgentSocket) != filepath.Join(dir, AgentSocket) ||
		socketPath(dir, QMPSocket) != filepath.Join(dir, QMPSocket)
}

// tailBuffer keeps the last few KiB QEMU wrote, for error messages.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

const tailMax = 4096

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > tailMax {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-tailMax:]...)
	}
	return len(p), nil
}

// LastLine is the last non-empty line written.
func (t *tailBuffer) LastLine() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := strings.TrimRight(string(t.buf), "\r\n\t ")
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[i+1:]
	}
	return strings.TrimSpace(s)
}

// inherited are the files QEMU gets beyond stdio, at the descriptors
// Args names (consoleFD, dirFD, stateFD), and our ends of them.
type inherited struct {
	extra   []*os.File // ExtraFiles: fd 3, 4, 5
	console *os.File   // the pipe's read end
	log     *boundedlog.Writer
	state   *os.File         // the saved state, for a restore
	mark    *vm.ConsoleWatch // sees the console on its way to the log
}

func (m *machine) inheritedFiles() (*inherited, error) {
	console := m.spec.ConsoleLog
	if console == "" {
		console = m.path(ConsoleFile)
	}
	log, err := boundedlog.Open(console, m.spec.ConsoleLogMax)
	if err != nil {
		return nil, fmt.Errorf("console log: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		log.Close()
		return nil, err
	}
	f := &inherited{console: r, log: log, mark: &m.agentLine, extra: []*os.File{w, nil, nil, nil}}
	fail := func(err error) (*inherited, error) {
		r.Close()
		w.Close()
		log.Close()
		if f.state != nil {
			f.state.Close()
		}
		return nil, err
	}
	d, err := os.Open(m.spec.Dir)
	if err != nil {
		return fail(err)
	}
	// The machine keeps Dir open for as long as it runs: socket paths
	// too long for sun_path go through /proc/self/fd (dial).
	m.mu.Lock()
	m.dirFile = d
	m.mu.Unlock()
	f.extra[dirFD-3] = d
	if m.spec.RestoreFrom != "" {
		if f.state, err = os.Open(m.spec.RestoreFrom); err != nil {
			return fail(fmt.Errorf("the saved state: %w", err))
		}
		f.extra[stateFD-3] = f.state
	}
	if m.ramBacking == ramMemfd {
		ram, err := newRAMFile(guestRAMMiB(m.spec) << 20)
		if err != nil {
			return fail(err)
		}
		m.mu.Lock()
		m.ram = ram
		m.mu.Unlock()
		f.extra[ramFD-3] = ram
	}
	return f, nil
}

// started closes our copies of what only QEMU needs.
func (f *inherited) started() {
	f.extra[consoleFD-3].Close()
	if f.state != nil {
		f.state.Close()
	}
}

// copyConsole moves the guest's console into its bounded log until QEMU
// exits (the pipe's last writer).
func (f *inherited) copyConsole() {
	defer f.log.Close()
	defer f.console.Close()
	io.Copy(io.MultiWriter(f.mark, f.log), f.console)
}

// AgentLineAt implements vm.ConsoleMarker.
func (m *machine) AgentLineAt() time.Time { return m.agentLine.AgentLineAt() }

// SetMemoryTarget implements vm.Balloon: QMP balloon. QEMU answers
// DeviceNotActive until the guest's virtio_balloon driver has bound the
// device: a guest without the driver cannot give memory back.
func (m *machine) SetMemoryTarget(ctx context.Context, bytes int64) error {
	if err := vm.CheckMemoryTarget(m.spec, bytes); err != nil {
		return err
	}
	m.mu.Lock()
	q, st := m.qmp, m.state
	m.mu.Unlock()
	if st != vm.StateRunning || q == nil {
		return precondition("machine %s is %s, not running", m.spec.ID, st)
	}
	if _, err := q.execute(ctx, "balloon", map[string]any{"value": bytes}); err != nil {
		var qe *qmpError
		if errors.As(err, &qe) && qe.Class == "DeviceNotActive" {
			return precondition("VM %s cannot give memory back: its guest has no virtio_balloon driver loaded (%s)", m.spec.ID, qe.Desc)
		}
		return fmt.Errorf("setting VM %s's memory to %d bytes: %w", m.spec.ID, bytes, err)
	}
	return nil
}
