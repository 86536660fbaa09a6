// Command macvz-agent is the guest agent of macvz: it runs inside each
// sandbox VM (as the guest's init on Linux QEMU guests) and serves the
// ttrpc service of runtime/agentapi to the host. The agent itself is
// runtime/agent; this is its flags, logging and listener.
//
//	macvz-agent [--listen serial:agent|vsock:PORT|unix:PATH] [--etc-dir DIR]
//	            [--system] [--modules FILE] [--late-modules DURATION]
//	            [--subreaper] [--log-level LEVEL]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/containerd/ttrpc"

	"github.com/macvz/macvz/runtime/agent"
)

// version is the agent's version (set with -ldflags -X main.version=...).
var version = "dev"

// defaultVsockPort is where the agent listens on vsock (macOS guests).
const defaultVsockPort = 1024

func main() {
	if len(os.Args) > 1 && os.Args[1] == agent.ExecHelperArg {
		agent.RunExecHelper(os.Args[2:])
	}
	// As init the agent is the kernel's modprobe helper too.
	if name, ok := agent.ModprobeRequest(os.Args); ok && os.Getpid() != 1 {
		os.Exit(agent.Modprobe(name))
	}
	pid1 := os.Getpid() == 1
	defListen := "serial:agent"
	if runtime.GOOS == "darwin" {
		defListen = fmt.Sprintf("vsock:%d", defaultVsockPort)
	}
	var (
		listenSpec = flag.String("listen", defListen, "where to serve: serial:NAME (virtio-serial port), vsock:PORT, unix:PATH")
		etcDir     = flag.String("etc-dir", "/etc", "directory for hostname and resolv.conf")
		system     = flag.Bool("system", pid1, "own the machine: set the kernel hostname, configure the network, mount shares, power off (default: when PID 1)")
		modules    = flag.String("modules", "/etc/macvz/modules", "kernel modules to load at start, one .ko path a line (init only)")
		lateMods   = flag.Duration("late-modules", agent.DefaultLateModules, "how long after the early kernel modules the power button's load, unless a late module is needed sooner; the other late ones load when needed (init only; 0: right after the early ones)")
		subreaper  = flag.Bool("subreaper", false, "become a child subreaper and reap every descendant (implied as PID 1)")
		logLevel   = flag.String("log-level", "info", "debug, info, warn or error")
		showVer    = flag.Bool("version", false, "print the version and exit")
		execHelper = flag.String("exec-helper", defaultExecHelper(), "the exec helper each restricted process starts through (Linux; missing or \"\": the agent re-executes itself, slower)")
	)
	flag.Parse()
	if *showVer {
		fmt.Println("macvz-agent", version)
		return
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(os.Stderr, "macvz-agent: --log-level: %v\n", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey && len(groups) == 0 {
				return slog.Attr{} // the console (or journal) stamps lines
			}
			return a
		}})).With("c", "macvz-agent")
	slog.SetDefault(log)

	opts := agent.Options{
		EtcDir:      *etcDir,
		System:      *system,
		Init:        pid1,
		Modules:     *modules,
		LateModules: *lateMods,
		Subreaper:   *subreaper,
		Version:     version,
		Log:         log,
		ExecHelper:  *execHelper,
	}
	if err := run(log, opts, *listenSpec); err != nil {
		log.Error("agent failed", "err", err)
		if pid1 {
			// init must not exit: the kernel would panic. Power off.
			agent.PowerOff(false)
			select {}
		}
		os.Exit(1)
	}
}

func run(log *slog.Logger, opts agent.Options, listenSpec string) error {
	pid1 := opts.Init
	start := time.Now()
	a, err := agent.New(opts)
	if err != nil {
		return err
	}
	l, err := listen(listenSpec, a.SerialPort)
	if err != nil {
		return err
	}
	srv, err := ttrpc.NewServer()
	if err != nil {
		return err
	}
	a.Register(srv)
	log.Info("serving", "listen", listenSpec, "version", version, "pid1", pid1, "startup", time.Since(start).Round(time.Microsecond))
	err = srv.Serve(context.Background(), l)
	if err != nil && !strings.Contains(err.Error(), "closed") {
		return err
	}
	return nil
}

// defaultExecHelper is where Linux guest images have the exec helper
// (cmd/macvz-exec); macOS guests start processes without one.
func defaultExecHelper() string {
	if runtime.GOOS == "linux" {
		return "/usr/libexec/macvz-exec"
	}
	return ""
}
