package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/macvz/macvz/runtime/adminapi"
)

// imageAdminCmds are `macvz image ls|inspect|rm|prune`: the daemon's
// image store through its admin API.
func imageAdminCmds() []*cobra.Command {
	var lsOut string
	var noTrunc bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the images in the daemon's store, with their logical size and the disk space they take",
		Long: `ls lists one line per image name. SIZE is the image's logical size (its
blobs, and its unpacked VM disk at its full length); ON DISK is the space
its files take (st_blocks: a sparse disk's holes are free). A blob two
images share counts in both.`,
		Args: cobra.NoArgs,
	}
	cfgLs := addConfigFlag(ls)
	ls.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(lsOut); err != nil {
			return err
		}
		return withAdmin(cmd, cfgLs, func(ctx context.Context, c *adminConn) error {
			r, err := c.ListImages(ctx, &adminapi.ListImagesRequest{})
			if err != nil {
				return err
			}
			if lsOut == "json" {
				out := []imageJSON{}
				for _, img := range r.GetImages() {
					out = append(out, imageAsJSON(img))
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			printImages(cmd.OutOrStdout(), r.GetImages(), time.Now(), noTrunc)
			return nil
		})
	}
	ls.Flags().StringVarP(&lsOut, "output", "o", "table", "output format: table or json")
	ls.Flags().BoolVar(&noTrunc, "no-trunc", false, "show whole image IDs")

	inspect := &cobra.Command{
		Use:   "inspect REF",
		Short: "Show an image as JSON: its names, sizes, users, and what crictl inspecti shows",
		Args:  cobra.ExactArgs(1),
	}
	cfgInspect := addConfigFlag(inspect)
	inspect.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(cmd, cfgInspect, func(ctx context.Context, c *adminConn) error {
			r, err := c.InspectImage(ctx, &adminapi.InspectImageRequest{Ref: args[0]})
			if err != nil {
				return err
			}
			out := struct {
				imageJSON
				Info json.RawMessage `json:"info,omitempty"`
			}{imageJSON: imageAsJSON(r.GetImage())}
			if json.Valid([]byte(r.GetInfo())) {
				out.Info = json.RawMessage(r.GetInfo())
			}
			return printJSON(cmd.OutOrStdout(), out)
		})
	}

	rm := &cobra.Command{
		Use:   "rm REF...",
		Short: "Remove images (by name, digest or ID) with all their names; an image a sandbox uses is refused",
		Args:  cobra.MinimumNArgs(1),
	}
	cfgRm := addConfigFlag(rm)
	rm.RunE = func(cmd *cobra.Command, args []string) error {
		return withAdmin(cmd, cfgRm, func(ctx context.Context, c *adminConn) error {
			for _, ref := range args {
				r, err := c.RemoveImage(ctx, &adminapi.RemoveImageRequest{Ref: ref})
				if err != nil {
					return err
				}
				printRemoved(cmd.OutOrStdout(), r.GetRemoved())
			}
			return nil
		})
	}

	var pruneOut string
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove every image no sandbox uses and the configuration does not name, and what interrupted pulls kept to resume from; print them and the space freed",
		Args:  cobra.NoArgs,
	}
	cfgPrune := addConfigFlag(prune)
	prune.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := checkOutput(pruneOut); err != nil {
			return err
		}
		return withAdmin(cmd, cfgPrune, func(ctx context.Context, c *adminConn) error {
			r, err := c.PruneImages(ctx, &adminapi.PruneImagesRequest{})
			if err != nil {
				return err
			}
			if pruneOut == "json" {
				out := struct {
					Removed          []imageJSON `json:"removed"`
					PartialDownloads int32       `json:"partialDownloads"`
					FreedBytes       int64       `json:"freedBytes"`
				}{Removed: []imageJSON{}, PartialDownloads: r.GetPartialDownloads(), FreedBytes: r.GetFreedBytes()}
				for _, img := range r.GetRemoved() {
					out.Removed = append(out.Removed, imageAsJSON(img))
				}
				return printJSON(cmd.OutOrStdout(), out)
			}
			for _, img := range r.GetRemoved() {
				printRemoved(cmd.OutOrStdout(), img)
			}
			var partial string
			switch n := r.GetPartialDownloads(); n {
			case 0:
			case 1:
				partial = " and 1 partial download of an interrupted pull"
			default:
				partial = fmt.Sprintf(" and %d partial downloads of interrupted pulls", n)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d images%s, freed %s\n", len(r.GetRemoved()), partial, humanSize(r.GetFreedBytes()))
			return nil
		})
	}
	prune.Flags().StringVarP(&pruneOut, "output", "o", "text", "output format: text or json")
	return []*cobra.Command{ls, inspect, rm, prune}
}

// printImages is `image ls`'s table: one line per name, as crictl
// images.
func printImages(out io.Writer, imgs []*adminapi.Image, now time.Time, noTrunc bool) {
	w := tabwriter.NewWriter(out, 0, 4, 3, ' ', 0)
	fmt.Fprintln(w, "IMAGE\tIMAGE ID\tKIND\tSIZE\tON DISK\tCREATED\tUSED BY")
	for _, img := range imgs {
		id := img.GetId()
		if !noTrunc {
			id = shortID(id)
		}
		created := "-"
		if n := img.GetCreatedUnixNano(); n != 0 {
			created = humanDuration(now.Sub(time.Unix(0, n))) + " ago"
		}
		used := "-"
		if len(img.GetUsedBy()) > 0 {
			var ids []string
			for _, sb := range img.GetUsedBy() {
				ids = append(ids, shortID(sb))
			}
			used = strings.Join(ids, ",")
		} else if img.GetPinned() {
			used = "(pinned)"
		}
		for _, name := range img.GetNames() {
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, id, img.GetKind(), humanSize(img.GetSizeBytes()), humanSize(img.GetDiskBytes()), created, used)
		}
	}
	w.Flush()
}

// printRemoved says which image went, by its names.
func printRemoved(w io.Writer, img *adminapi.Image) {
	fmt.Fprintf(w, "removed %s (%s, %s on disk): %s\n", shortID(img.GetId()), img.GetKind(), humanSize(img.GetDiskBytes()), strings.Join(img.GetNames(), ", "))
}

// imageJSON is an image for scripts.
type imageJSON struct {
	ID        string    `json:"id"`
	Names     []string  `json:"names"`
	Kind      string    `json:"kind"`
	SizeBytes int64     `json:"sizeBytes"`
	DiskBytes int64     `json:"diskBytes"`
	CreatedAt time.Time `json:"createdAt"`
	UsedBy    []string  `json:"usedBy,omitempty"`
	Pinned    bool      `json:"pinned,omitempty"`
}

func imageAsJSON(img *adminapi.Image) imageJSON {
	return imageJSON{
		ID: img.GetId(), Names: img.GetNames(), Kind: img.GetKind(), SizeBytes: img.GetSizeBytes(), DiskBytes: img.GetDiskBytes(),
		CreatedAt: fromUnixNano(img.GetCreatedUnixNano()).UTC(), UsedBy: img.GetUsedBy(), Pinned: img.GetPinned(),
	}
}
