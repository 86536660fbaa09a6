package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/runtime/adminapi"
)

// vmCmd is `macvz vm ls|inspect|console`: the daemon's VMs through its
// admin API.
func vmCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "vm", Short: "The VMs the daemon runs: one per pod sandbox (and the node VM)"}
	cfgPath := addConfigFlag(cmd)

	var lsOut string
	var noTrunc bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List every VM: pod, backend, image, state, IP, size, uptime, boot kind, VM slot",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(lsOut); err != nil {
				return err
			}
			return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
				r, err := c.ListVMs(ctx, &adminapi.ListVMsRequest{})
				if err != nil {
					return err
				}
				now := time.Now()
				if lsOut == "json" {
					out := []vmJSON{}
					for _, v := range r.GetVms() {
						out = append(out, vmAsJSON(v, now))
					}
					return printJSON(cmd.OutOrStdout(), out)
				}
				printVMs(cmd.OutOrStdout(), r.GetVms(), now, noTrunc)
				return nil
			})
		},
	}
	ls.Flags().StringVarP(&lsOut, "output", "o", "table", "output format: table or json")
	ls.Flags().BoolVar(&noTrunc, "no-trunc", false, "show whole sandbox IDs")

	var inspOut string
	inspect := &cobra.Command{
		Use:   "inspect POD",
		Short: "Show a VM: the spec its shim runs, the shim's pid and sockets (POD: sandbox ID or prefix, or [namespace/]name)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(inspOut); err != nil {
				return err
			}
			return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
				r, err := c.InspectVM(ctx, &adminapi.InspectVMRequest{Pod: args[0]})
				if err != nil {
					return err
				}
				if inspOut == "json" {
					return printJSON(cmd.OutOrStdout(), vmInspectAsJSON(r, time.Now()))
				}
				return printVMInspect(cmd.OutOrStdout(), r, time.Now())
			})
		},
	}
	inspect.Flags().StringVarP(&inspOut, "output", "o", "text", "output format: text or json")

	var follow bool
	console := &cobra.Command{
		Use:   "console POD",
		Short: "Print a VM's console log (-f follows it) (POD: sandbox ID or prefix, or [namespace/]name)",
		Long: `console prints what the VM wrote to its serial console (the console.log
of its sandbox's state directory, the rotated part first). On a terminal,
control characters the guest wrote (escape sequences) are shown as \xNN.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
				ctx, cancel := context.WithCancel(ctx)
				defer cancel()
				stream, err := c.Console(ctx, &adminapi.ConsoleRequest{Pod: args[0], Follow: follow})
				if err != nil {
					return err
				}
				var w io.Writer = cmd.OutOrStdout()
				if isTerminal(w) {
					w = &safeTerminal{w: w}
				}
				for {
					chunk, err := stream.Recv()
					if errors.Is(err, io.EOF) {
						return nil
					}
					if err != nil {
						return err
					}
					if _, err := w.Write(chunk.GetData()); err != nil {
						return err
					}
				}
			})
		},
	}
	console.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing what the VM writes")
	cmd.AddCommand(ls, inspect, console)
	return cmd
}

func checkOutput(o string) error {
	switch o {
	case "table", "text", "json":
		return nil
	}
	return fmt.Errorf("unknown output format %q: use json (or leave -o out for a table)", o)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// orDash is s, or "-" for an empty cell (so a table splits into fields).
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// podName is namespace/name.
func podName(v *adminapi.VM) string {
	if v.GetPodNamespace() == "" {
		return orDash(v.GetPodName())
	}
	return v.GetPodNamespace() + "/" + v.GetPodName()
}

// vmMemory is the VM's memory: what it booted with, and the balloon's
// target after a resize ("1GiB>512MiB").
func vmMemory(v *adminapi.VM) string {
	if v.GetMemoryBytes() == 0 {
		return "-"
	}
	s := humanSize(v.GetMemoryBytes())
	if t := v.GetMemoryTargetBytes(); t > 0 && t != v.GetMemoryBytes() {
		s += ">" + humanSize(t)
	}
	return s
}

func vmUptime(v *adminapi.VM, now time.Time) string {
	if v.GetBootedUnixNano() == 0 {
		return "-"
	}
	return humanDuration(now.Sub(time.Unix(0, v.GetBootedUnixNano())))
}

// printVMs is `vm ls`'s table.
func printVMs(out io.Writer, vms []*adminapi.VM, now time.Time, noTrunc bool) {
	w := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "SANDBOX ID\tPOD\tBACKEND\tIMAGE\tSTATE\tIP\tCPUS\tMEMORY\tUPTIME\tBOOT\tSLOT")
	for _, v := range vms {
		id := v.GetSandboxId()
		if !noTrunc {
			id = shortID(id)
		}
		pod := podName(v)
		if v.GetNode() {
			pod += " (node VM)"
		}
		cpus, slot := "-", "-"
		if v.GetCpus() > 0 {
			cpus = fmt.Sprint(v.GetCpus())
		}
		if v.GetSlot() > 0 {
			slot = fmt.Sprintf("%s/%d", orDash(v.GetOs()), v.GetSlot())
		}
		ip := "-"
		if len(v.GetIps()) > 0 {
			ip = v.GetIps()[0]
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", id, pod, orDash(v.GetBackend()), orDash(v.GetImage()),
			v.GetState(), ip, cpus, vmMemory(v), vmUptime(v, now), orDash(v.GetBoot()), slot)
	}
	w.Flush()
}

// vmJSON is a VM for scripts (`vm ls -o json`).
type vmJSON struct {
	SandboxID         string     `json:"sandboxID"`
	Pod               string     `json:"pod"`
	Namespace         string     `json:"namespace"`
	Node              bool       `json:"node,omitempty"`
	Backend           string     `json:"backend"`
	Image             string     `json:"image,omitempty"`
	ImageID           string     `json:"imageID,omitempty"`
	State             string     `json:"state"`
	Reason            string     `json:"reason,omitempty"`
	IPs               []string   `json:"ips,omitempty"`
	CPUs              int32      `json:"cpus,omitempty"`
	MemoryBytes       int64      `json:"memoryBytes,omitempty"`
	MemoryTargetBytes int64      `json:"memoryTargetBytes,omitempty"`
	BootedAt          *time.Time `json:"bootedAt,omitempty"`
	UptimeSeconds     int64      `json:"uptimeSeconds,omitempty"`
	Boot              string     `json:"boot,omitempty"`
	OS                string     `json:"os,omitempty"`
	Slot              int32      `json:"slot,omitempty"`
	CreatedAt         time.Time  `json:"createdAt"`
}

func vmAsJSON(v *adminapi.VM, now time.Time) vmJSON {
	j := vmJSON{
		SandboxID: v.GetSandboxId(), Pod: v.GetPodName(), Namespace: v.GetPodNamespace(), Node: v.GetNode(),
		Backend: v.GetBackend(), Image: v.GetImage(), ImageID: v.GetImageId(), State: v.GetState(), Reason: v.GetReason(),
		IPs: v.GetIps(), CPUs: v.GetCpus(), MemoryBytes: v.GetMemoryBytes(), MemoryTargetBytes: v.GetMemoryTargetBytes(),
		Boot: v.GetBoot(), OS: v.GetOs(), Slot: v.GetSlot(), CreatedAt: fromUnixNano(v.GetCreatedUnixNano()).UTC(),
	}
	if n := v.GetBootedUnixNano(); n != 0 {
		t := time.Unix(0, n).UTC()
		j.BootedAt = &t
		j.UptimeSeconds = int64(now.Sub(t).Seconds())
	}
	return j
}

// vmInspectJSON is `vm inspect -o json`.
type vmInspectJSON struct {
	vmJSON
	Dir        string          `json:"dir"`
	ShimPID    int64           `json:"shimPID,omitempty"`
	Sockets    []string        `json:"sockets,omitempty"`
	ConsoleLog string          `json:"consoleLog"`
	Spec       json.RawMessage `json:"spec,omitempty"`
}

func vmInspectAsJSON(r *adminapi.InspectVMResponse, now time.Time) vmInspectJSON {
	j := vmInspectJSON{vmJSON: vmAsJSON(r.GetVm(), now), Dir: r.GetDir(), ShimPID: r.GetShimPid(), Sockets: r.GetSockets(), ConsoleLog: r.GetConsoleLog()}
	if json.Valid(r.GetSpec()) {
		j.Spec = r.GetSpec()
	}
	return j
}

// printVMInspect is `vm inspect`'s text: the VM's summary, then its spec.
func printVMInspect(out io.Writer, r *adminapi.InspectVMResponse, now time.Time) error {
	v := r.GetVm()
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(w, "sandbox\t%s\n", v.GetSandboxId())
	fmt.Fprintf(w, "pod\t%s\n", podName(v))
	state := v.GetState()
	if v.GetReason() != "" {
		state += " (" + v.GetReason() + ")"
	}
	fmt.Fprintf(w, "state\t%s\n", state)
	fmt.Fprintf(w, "backend\t%s\n", orDash(v.GetBackend()))
	fmt.Fprintf(w, "image\t%s\n", orDash(v.GetImage()))
	if v.GetCpus() > 0 {
		fmt.Fprintf(w, "size\t%d CPUs, %s memory\n", v.GetCpus(), vmMemory(v))
	}
	if v.GetBootedUnixNano() != 0 {
		fmt.Fprintf(w, "booted\t%s (%s, up %s)\n", time.Unix(0, v.GetBootedUnixNano()).Format(time.RFC3339), orDash(v.GetBoot()), vmUptime(v, now))
	}
	if len(v.GetIps()) > 0 {
		fmt.Fprintf(w, "IPs\t%s\n", strings.Join(v.GetIps(), ", "))
	}
	shim := "- (no shim running)"
	if r.GetShimPid() > 0 {
		shim = fmt.Sprint(r.GetShimPid())
	}
	fmt.Fprintf(w, "shim pid\t%s\n", shim)
	if len(r.GetSockets()) == 0 {
		fmt.Fprintf(w, "sockets\t-\n")
	}
	for i, s := range r.GetSockets() {
		label := "sockets"
		if i > 0 {
			label = ""
		}
		fmt.Fprintf(w, "%s\t%s\n", label, s)
	}
	fmt.Fprintf(w, "console log\t%s\n", r.GetConsoleLog())
	fmt.Fprintf(w, "directory\t%s\n", r.GetDir())
	if err := w.Flush(); err != nil {
		return err
	}
	if len(r.GetSpec()) == 0 {
		_, err := fmt.Fprintln(out, "spec: none (the VM has not booted)")
		return err
	}
	var b bytes.Buffer
	if err := json.Indent(&b, r.GetSpec(), "", "  "); err != nil {
		b.Reset()
		b.Write(r.GetSpec())
	}
	_, err := fmt.Fprintf(out, "spec (%s):\n%s\n", "the VM spec the shim runs", strings.TrimRight(b.String(), "\n"))
	return err
}
