package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/macvz/macvz/runtime/adminapi"
)

// imagePullCmd is `macvz image pull REF`: a pull through the running
// daemon, with its progress.
func imagePullCmd() *cobra.Command {
	var creds string
	var quiet, plain bool
	cmd := &cobra.Command{
		Use:   "pull REF",
		Short: "Pull an image through the daemon, showing its progress",
		Long: `pull fetches REF into the daemon's image store, as a CRI pull does: a
pull of the same image already running (kubelet's, another pull's) is
joined, not repeated; a pull interrupted (Ctrl-C, a dropped link, the
daemon's restart) keeps what it downloaded, and the next pull resumes from
there. A VM image is unpacked as it downloads; a Tart image's disk chunks
go straight into its unpack, which the next pull resumes chunk by chunk
(each finished chunk checked again, a chunk cut mid-way downloaded again).

Progress: on a terminal, the total (bytes, share, rate, ETA) and each
blob downloading, redrawn in place; otherwise a line every 5 seconds;
--quiet prints only the image ID at the end.

Credentials: --creds USER[:PASSWORD] (the password is asked for when left
out), else the registry's entry in Docker's config.json ($DOCKER_CONFIG,
else ~/.docker, the sudo user's when run through sudo), its credential
helper included.`,
		Args: cobra.ExactArgs(1),
	}
	cfgPath := addConfigFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ref := args[0]
		named, err := parseRefArg(ref)
		if err != nil {
			return err
		}
		req := &adminapi.PullImageRequest{Ref: ref}
		if req.Username, req.Password, req.IdentityToken, err = registryCreds(cmd, creds, reference.Domain(named)); err != nil {
			return err
		}
		out, tty, every := progressOutput(cmd, plain)
		req.ProgressIntervalMs = every
		// Ctrl-C ends the pull (the daemon's goes on while kubelet or
		// another caller waits for it) and says how to resume.
		defer interruptible(cmd)()
		ctx := cmd.Context()
		err = withAdmin(cmd, cfgPath, func(ctx context.Context, c *adminConn) error {
			return runPull(ctx, c, req, named.String(), out, tty, quiet)
		})
		if ctx.Err() != nil {
			return fmt.Errorf("pull of %s interrupted: what it downloaded is kept, and pulling again resumes from there", named.String())
		}
		return err
	}
	cmd.Flags().StringVar(&creds, "creds", "", "registry credentials USER[:PASSWORD]")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print only the image ID")
	cmd.Flags().BoolVar(&plain, "plain", false, "plain progress lines even on a terminal")
	return cmd
}

// runPull streams the pull's progress to the printer and ends with the
// image's ID.
func runPull(ctx context.Context, c *adminConn, req *adminapi.PullImageRequest, name string, out io.Writer, tty, quiet bool) error {
	stream, err := c.PullImage(ctx, req)
	if err != nil {
		return err
	}
	_, err = followProgress(ctx, stream.Recv, verbPull, name, out, tty, quiet)
	return err
}

// followProgress shows a pull's, import's or push's progress until its
// last message (the one with the image), which it returns.
func followProgress(ctx context.Context, recv func() (*adminapi.PullImageProgress, error), verb progressVerb, name string, out io.Writer, tty, quiet bool) (*adminapi.PullImageProgress, error) {
	p := newProgressPrinter(out, tty)
	p.verb = verb
	var view pullView
	for {
		m, err := recv()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("the daemon ended the %s of %s without its result", verb.noun, name)
		}
		if err != nil {
			if !quiet && ctx.Err() == nil {
				p.done(view, "", adminErr(err))
			}
			return nil, adminErr(err)
		}
		view = pullViewOf(name, m)
		if img := m.GetImage(); img != nil {
			if quiet {
				fmt.Fprintln(out, img.GetId())
			} else {
				p.done(view, img.GetId(), nil)
			}
			return m, nil
		}
		if !quiet {
			p.update(view)
		}
	}
}

func pullViewOf(name string, m *adminapi.PullImageProgress) pullView {
	v := pullView{Ref: name, Elapsed: time.Duration(m.GetElapsedNanos())}
	for _, b := range m.GetBlobs() {
		v.Blobs = append(v.Blobs, blobView{Digest: b.GetDigest(), MediaType: b.GetMediaType(), Size: b.GetSize(), Done: b.GetDone(), Fetched: b.GetFetched(), Complete: b.GetComplete()})
	}
	return v
}

// registryCreds are the credentials for host: --creds USER[:PASSWORD]
// (the password asked for when left out), else Docker's config.json.
func registryCreds(cmd *cobra.Command, creds, host string) (user, pass, token string, err error) {
	if creds != "" {
		user, pass, hasPass, err := parseCreds(creds)
		if err != nil {
			return "", "", "", err
		}
		if !hasPass {
			if pass, err = readPassword(cmd.InOrStdin(), cmd.ErrOrStderr(), user); err != nil {
				return "", "", "", err
			}
		}
		return user, pass, "", nil
	}
	a, err := authFromDockerConfig(cmd.Context(), dockerConfigPath(), host)
	if err != nil {
		return "", "", "", fmt.Errorf("registry credentials: %w", err)
	}
	if a == nil {
		return "", "", "", nil
	}
	return a.Username, a.Password, a.IdentityToken, nil
}

// readPassword asks for a password: hidden on a terminal, else the
// first line of stdin (a script's pipe).
func readPassword(in io.Reader, prompt io.Writer, user string) (string, error) {
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprintf(prompt, "Password for %s: ", user)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(prompt)
		return string(b), err
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}
