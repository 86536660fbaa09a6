package cri

import (
	"context"
	"log/slog"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/macvz/macvz/internal/guard"
)

// The one place where errors become gRPC statuses: everything below cri/
// returns errors classified with containerd/errdefs (wrapped with context
// a user can act on), and these interceptors map the class to its code.
// An unclassified error becomes Unknown, as in containerd.

//
// gRPC does not recover a handler's panic; these do (answers from guests
// reach most handlers), so one call fails with Internal and the daemon
// goes on.

func unaryErrors(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	var resp any
	err := guard.Do(callLog(req), "CRI call "+info.FullMethod, func() (err error) {
		resp, err = handler(ctx, req)
		return err
	})
	if err != nil {
		err = toGRPC(err)
		slog.Log(ctx, levelFor(err), "CRI call failed", "method", info.FullMethod, "code", status.Code(err).String(), "err", status.Convert(err).Message(), "duration", time.Since(start))
	} else {
		slog.Log(ctx, slog.LevelDebug-1, "CRI call", "method", info.FullMethod, "duration", time.Since(start))
	}
	return resp, err
}

func streamErrors(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	err := guard.Do(slog.Default(), "CRI stream "+info.FullMethod, func() error { return handler(srv, ss) })
	if err != nil {
		err = toGRPC(err)
		slog.Log(ss.Context(), levelFor(err), "CRI stream failed", "method", info.FullMethod, "code", status.Code(err).String(), "err", status.Convert(err).Message())
	}
	return err
}

// callLog is the log of a call, with the sandbox or container it names.
func callLog(req any) *slog.Logger {
	log := slog.Default()
	if r, ok := req.(interface{ GetPodSandboxId() string }); ok && r.GetPodSandboxId() != "" {
		log = log.With("sandbox", r.GetPodSandboxId())
	}
	if r, ok := req.(interface{ GetContainerId() string }); ok && r.GetContainerId() != "" {
		log = log.With("container", r.GetContainerId())
	}
	return log
}

// levelFor keeps expected answers (NotFound for a status poll, Unimplemented
// for a verb this build lacks) out of the default log.
func levelFor(err error) slog.Level {
	switch status.Code(err).String() {
	case "NotFound", "Unimplemented", "AlreadyExists", "Canceled":
		return slog.LevelDebug
	}
	return slog.LevelWarn
}

// toGRPC is errgrpc.ToGRPC, made safe: it panics on some error chains
// from other libraries (a wrapper whose Unwrap returns nil inside a
// joined error), and a CRI call must answer, not take the daemon down.
// Then the status keeps the class and the message, not the details.
func toGRPC(err error) (out error) {
	defer func() {
		if r := recover(); r != nil {
			slog.Error("converting an error to a gRPC status panicked; answering with its class only", "err", err.Error(), "panic", r)
			out = status.Error(codeOf(err), err.Error())
		}
	}()
	return errgrpc.ToGRPC(err)
}

// codeOf is the gRPC code of an errdefs class.
func codeOf(err error) codes.Code {
	for _, c := range []struct {
		is   func(error) bool
		code codes.Code
	}{
		{errdefs.IsInvalidArgument, codes.InvalidArgument},
		{errdefs.IsNotFound, codes.NotFound},
		{errdefs.IsAlreadyExists, codes.AlreadyExists},
		{errdefs.IsFailedPrecondition, codes.FailedPrecondition},
		{errdefs.IsUnavailable, codes.Unavailable},
		{errdefs.IsNotImplemented, codes.Unimplemented},
		{errdefs.IsPermissionDenied, codes.PermissionDenied},
		{errdefs.IsUnauthorized, codes.Unauthenticated},
		{errdefs.IsDataLoss, codes.DataLoss},
		{errdefs.IsDeadlineExceeded, codes.DeadlineExceeded},
		{errdefs.IsCanceled, codes.Canceled},
	} {
		if c.is(err) {
			return c.code
		}
	}
	return codes.Unknown
}
