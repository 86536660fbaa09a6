package imagestore

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"

	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	remoteerrors "github.com/containerd/containerd/v2/core/remotes/errors"
	"github.com/containerd/errdefs"
)

// Auth is what a client gives to pull a private image (CRI AuthConfig).
// Never log it.
type Auth struct {
	Username string
	Password string
	// Auth is base64("username:password"), as in a docker config.json.
	Auth string
	// IdentityToken is an OAuth2 refresh token exchanged for a bearer
	// token at the registry's token endpoint.
	IdentityToken string
	// RegistryToken is a bearer token sent to the registry as-is.
	RegistryToken string
	// ServerAddress, when set, names the registry host the credentials
	// belong to; otherwise they belong to the image's own registry.
	ServerAddress string
}

// credentials returns the (username, secret) pair containerd's docker
// authorizer expects; an empty username with a secret means "refresh
// token".
func (a *Auth) credentials() (string, string, error) {
	switch {
	case a == nil:
		return "", "", nil
	case a.IdentityToken != "":
		return "", a.IdentityToken, nil
	case a.Username != "":
		return a.Username, a.Password, nil
	case a.Auth != "":
		raw, err := base64.StdEncoding.DecodeString(a.Auth)
		if err != nil {
			return "", "", fmt.Errorf("auth: not valid base64: %w", errdefs.ErrInvalidArgument)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return "", "", fmt.Errorf("auth: decoded value is not \"username:password\": %w", errdefs.ErrInvalidArgument)
		}
		return user, pass, nil
	}
	return "", "", nil
}

// tokenAuthorizer sends a fixed bearer token (CRI registry_token) to the
// credentials' host and nothing to any other host.
type tokenAuthorizer struct {
	host, token string
}

func (t tokenAuthorizer) Authorize(_ context.Context, req *http.Request) error {
	if req.URL.Host == t.host {
		req.Header.Set("Authorization", "Bearer "+t.token)
	}
	return nil
}

func (t tokenAuthorizer) AddResponses(_ context.Context, rs []*http.Response) error {
	// A 401 with a fixed token cannot be fixed by retrying.
	return fmt.Errorf("registry %s refused the registry token: %w", t.host, errdefs.ErrUnauthenticated)
}

// resolver builds containerd's docker resolver for one pull: the
// configured mirrors of the reference's host first, then the host itself;
// plain HTTP only for hosts configured insecure; credentials only to the
// host they belong to.
func (s *Store) resolver(refHost string, auth *Auth) (remotes.Resolver, error) {
	credHost := refHost
	if auth != nil && auth.ServerAddress != "" {
		credHost = normalizeServerAddress(auth.ServerAddress)
	}
	user, secret, err := auth.credentials()
	if err != nil {
		return nil, err
	}
	var authorizer docker.Authorizer
	if auth != nil && auth.RegistryToken != "" {
		authorizer = tokenAuthorizer{host: hostForRequests(credHost), token: auth.RegistryToken}
	} else {
		authorizer = docker.NewDockerAuthorizer(docker.WithAuthCreds(func(h string) (string, string, error) {
			if h == hostForRequests(credHost) {
				return user, secret, nil
			}
			return "", "", nil
		}))
	}
	hosts := func(host string) ([]docker.RegistryHost, error) {
		var out []docker.RegistryHost
		for _, m := range s.opts.Hosts[host].Mirrors {
			out = append(out, s.registryHost(m, docker.HostCapabilityPull|docker.HostCapabilityResolve, authorizer))
		}
		out = append(out, s.registryHost(host, docker.HostCapabilityPull|docker.HostCapabilityResolve|docker.HostCapabilityPush, authorizer))
		return out, nil
	}
	return docker.NewResolver(docker.ResolverOptions{Hosts: hosts}), nil
}

func (s *Store) registryHost(host string, caps docker.HostCapabilities, a docker.Authorizer) docker.RegistryHost {
	hc := s.opts.Hosts[host]
	scheme := "https"
	if hc.Insecure {
		scheme = "http"
	}
	return docker.RegistryHost{
		Client:       s.registryClient(host),
		Authorizer:   a,
		Host:         hostForRequests(host),
		Scheme:       scheme,
		Path:         "/v2",
		Capabilities: caps,
	}
}

// registryClient is the HTTP client of a registry host, made on first
// use and shared by every pull, resolve and push after it: they reuse its
// idle connections (and their TLS sessions) instead of each dialing and
// handshaking anew, which a pull of an image already here (kubelet's
// imagePullPolicy: Always) is mostly made of. A client holds no
// credentials: each pull's authorizer adds its own to its requests.
func (s *Store) registryClient(host string) *http.Client {
	s.clientsMu.Lock()
	defer s.clientsMu.Unlock()
	if c := s.clients[host]; c != nil {
		return c
	}
	// The host's TLS setting is fixed for the store's life (Options).
	tr := docker.DefaultHTTPTransport(&tls.Config{InsecureSkipVerify: s.opts.Hosts[host].SkipVerify}) //nolint:gosec // only where configured
	// Room for every download of a pull to leave its connection idle for
	// the next request (net/http keeps 2 a host by default).
	tr.MaxIdleConnsPerHost = s.opts.MaxConcurrentDownloads + 2
	tr.MaxIdleConns = max(tr.MaxIdleConns, tr.MaxIdleConnsPerHost)
	c := &http.Client{Transport: tr}
	if s.clients == nil {
		s.clients = map[string]*http.Client{}
	}
	s.clients[host] = c
	return c
}

// hostForRequests maps the reference host to the host that receives HTTP
// requests: Docker Hub's references say docker.io, its API is elsewhere.
func hostForRequests(h string) string {
	if h == "docker.io" {
		return "registry-1.docker.io"
	}
	return h
}

// normalizeServerAddress turns what clients put in server_address
// ("https://index.docker.io/v1/", "myreg:5000") into a host.
func normalizeServerAddress(a string) string {
	a = strings.TrimPrefix(strings.TrimPrefix(a, "https://"), "http://")
	a, _, _ = strings.Cut(a, "/")
	if a == "index.docker.io" || a == "registry-1.docker.io" {
		return "docker.io"
	}
	return a
}

// classify wraps a registry error with the errdefs class CRI callers need,
// keeping the original text.
func classify(host string, err error) error {
	if err == nil {
		return nil
	}
	var us remoteerrors.ErrUnexpectedStatus
	var opErr *net.OpError
	var dnsErr *net.DNSError
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, docker.ErrInvalidAuthorization):
		return fmt.Errorf("registry %s rejected the credentials: %w: %w", host, errdefs.ErrUnauthenticated, err)
	case errors.As(err, &us):
		switch {
		case us.StatusCode == http.StatusUnauthorized:
			return fmt.Errorf("registry %s: authentication required or credentials rejected: %w: %w", host, errdefs.ErrUnauthenticated, err)
		case us.StatusCode == http.StatusForbidden:
			return fmt.Errorf("registry %s: access denied: %w: %w", host, errdefs.ErrPermissionDenied, err)
		case us.StatusCode == http.StatusTooManyRequests:
			return fmt.Errorf("registry %s: rate limited: %w: %w", host, errdefs.ErrResourceExhausted, err)
		case us.StatusCode >= 500:
			return fmt.Errorf("registry %s: server error: %w: %w", host, errdefs.ErrUnavailable, err)
		}
	case strings.Contains(err.Error(), "server gave HTTP response to HTTPS client"):
		return fmt.Errorf("registry %s speaks plain HTTP; allow it with [registry.hosts.%q] insecure = true: %w: %w", host, host, errdefs.ErrUnavailable, err)
	case errors.Is(err, io.ErrUnexpectedEOF):
		// The connection broke off mid-response (and the fetcher's own
		// reconnection attempts failed): a network failure, which the
		// next pull resumes from.
		return fmt.Errorf("registry %s: connection lost: %w: %w", host, errdefs.ErrUnavailable, err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH),
		errors.As(err, &dnsErr), errors.As(err, &opErr):
		return fmt.Errorf("registry %s is unreachable: %w: %w", host, errdefs.ErrUnavailable, err)
	}
	return err
}
