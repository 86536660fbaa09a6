package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/distribution/reference"
	"github.com/spf13/cobra"

	"github.com/macvz/macvz/runtime/adminapi"
	"github.com/macvz/macvz/vmimage/imagestore"
)

// imageImportCmd is `macvz image import SRC REF`.
func imageImportCmd() *cobra.Command {
	var quiet, plain bool
	cmd := &cobra.Command{
		Use:   "import SRC REF",
		Short: "Make an image from a Tart VM directory, a macOS-vz-kubelet one or an OCI image layout, with no registry",
		Long: `import records the VM in SRC in the daemon's image store under REF, so
that a pod can use REF at once:

  a Tart VM directory (~/.tart/vms/NAME: config.json, disk.img, nvram.bin)
  a macOS-vz-kubelet directory (config.json, disk.img, aux.img)
      The disk is cloned into the image (instant on APFS, XFS and btrfs;
      a sparse copy elsewhere) and read once, for the digests of the Tart
      image (512 MiB chunks, LZ4) or macOS-vz-kubelet image it becomes:
      the same files always make the same image ID. The VM may go on
      running from SRC: the image is the clone.
  an OCI image layout (oci-layout, index.json, blobs/)
      The image of the layout (the only one, or the one whose name
      annotation is REF or its tag) is verified and stored as a pull
      would store it.

The usual path for a macOS image: tart clone, macvz image install-agent
~/.tart/vms/NAME, macvz image import ~/.tart/vms/NAME REF. SRC is read by
the daemon, on this machine.`,
		Args: cobra.ExactArgs(2),
	}
	cfgPath := addConfigFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		src, err := filepath.Abs(args[0])
		if err != nil {
			return err
		}
		named, err := parseRefArg(args[1])
		if err != nil {
			return err
		}
		out, tty, every := progressOutput(cmd, plain)
		req := &adminapi.ImportImageRequest{Source: src, Ref: args[1], ProgressIntervalMs: every}
		defer interruptible(cmd)()
		return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
			stream, err := c.ImportImage(ctx, req)
			if err != nil {
				return err
			}
			_, err = followProgress(ctx, stream.Recv, verbImport, named.String(), out, tty, quiet)
			return err
		})
	}
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image ID")
	cmd.Flags().BoolVar(&plain, "plain", false, "plain progress lines even on a terminal")
	return cmd
}

// imagePushCmd is `macvz image push REF [SOURCE]`.
func imagePushCmd() *cobra.Command {
	var creds string
	var quiet, plain bool
	cmd := &cobra.Command{
		Use:   "push REF [SOURCE]",
		Short: "Push an image of the daemon's store (or a VM directory) to a registry",
		Long: `push sends the image SOURCE (a name or ID in the daemon's store; REF
itself when left out) to the registry as REF, as it is stored: the same
manifest, so pulling REF gives the same image ID. A Tart image goes in
Tart's own format (the disk in 512 MiB chunks compressed with Apple's LZ4
framing), which tart pull and macvz pull both read. Blobs the registry
already has are not sent; the others go several at a time. A VM disk the
store keeps only unpacked (image.keep_disk_chunks = false, the default)
is compressed again from the unpacked disk as it uploads, and checked
against the image's digests.

SOURCE may also be a VM directory (a Tart one, a macOS-vz-kubelet one):
it is imported under REF first (see macvz image import), then pushed.

Credentials as for macvz image pull: --creds, else Docker's config.json.`,
		Args: cobra.RangeArgs(1, 2),
	}
	cfgPath := addConfigFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		named, err := parseRefArg(args[0])
		if err != nil {
			return err
		}
		req := &adminapi.PushImageRequest{Ref: args[0]}
		if len(args) == 2 {
			req.Source = args[1]
			if fi, err := os.Stat(args[1]); err == nil && fi.IsDir() {
				if req.Source, err = filepath.Abs(args[1]); err != nil {
					return err
				}
			}
		}
		if req.Username, req.Password, req.IdentityToken, err = registryCreds(cmd, creds, reference.Domain(named)); err != nil {
			return err
		}
		out, tty, every := progressOutput(cmd, plain)
		req.ProgressIntervalMs = every
		defer interruptible(cmd)()
		return withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
			stream, err := c.PushImage(ctx, req)
			if err != nil {
				return err
			}
			last, err := followProgress(ctx, stream.Recv, verbPush, named.String(), out, tty, quiet)
			if err != nil {
				return err
			}
			if r := last.GetPushed(); r != nil && !quiet {
				fmt.Fprintf(out, "%s: manifest %s; %d blobs uploaded (%s), %d already in the registry\n",
					named.String(), r.GetManifestDigest(), r.GetUploaded(), humanSize(r.GetBytes()), r.GetSkipped())
				if r.GetManifestDigest() != last.GetImage().GetId() && last.GetImage().GetKind() == "tart" {
					fmt.Fprintf(out, "the disk went in chunks made anew (the image's own were released after unpacking, and another encoder made them): the same disk under a new manifest, not %s\n", last.GetImage().GetId())
				}
			}
			return nil
		})
	}
	cmd.Flags().StringVar(&creds, "creds", "", "registry credentials USER[:PASSWORD]")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image ID")
	cmd.Flags().BoolVar(&plain, "plain", false, "plain progress lines even on a terminal")
	return cmd
}

// parseRefArg normalizes an image reference argument, with the error
// a user reads.
func parseRefArg(ref string) (reference.Named, error) {
	named, err := imagestore.ParseRef(ref)
	if err != nil {
		return nil, errors.New(strings.TrimSuffix(err.Error(), ": invalid argument"))
	}
	return named, nil
}

// progressOutput is where a long command (pull, import, push) shows its
// progress: its output, whether that is a terminal (a block redrawn in
// place) and how often the daemon sends progress for it (often enough
// to redraw a terminal, once per plain line elsewhere).
func progressOutput(cmd *cobra.Command, plain bool) (out io.Writer, tty bool, everyMs int64) {
	out = cmd.OutOrStdout()
	tty = !plain && isTerminal(out)
	if tty {
		return out, true, 200
	}
	return out, false, 5000
}

// interruptible makes Ctrl-C (or SIGTERM) end cmd's context; call the
// returned func when done.
func interruptible(cmd *cobra.Command) func() {
	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	cmd.SetContext(ctx)
	return stop
}
