//go:build linux

// Package cluster runs a real Kubernetes cluster for the integration
// tests: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// in a network namespace of their own, and macvz nodes (macvz serve and
// kubelet, each node in its own network and mount namespace) joined to it
// by a veth "LAN". Its PKI is made here with Go's crypto. Everything a
// test starts is stopped and removed when the test ends, pass or fail.
package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// CertKey is a certificate, its key and the files holding them (PEM).
type CertKey struct {
	Cert     *x509.Certificate
	Key      crypto.Signer
	CertPEM  []byte
	KeyPEM   []byte
	CertFile string
	KeyFile  string
}

// PKI is a cluster's certificates, in Dir: the cluster CA (it signs every
// client and serving certificate, and kubelets and the apiserver trust
// it), the front-proxy CA and its client (the apiserver's aggregation
// layer), and the service-account signing key pair.
type PKI struct {
	Dir          string
	CA           *CertKey
	FrontProxyCA *CertKey
	// SAKey and SAPub are the service-account signing key pair's files.
	SAKey, SAPub string
}

// NewPKI makes the CAs and the service-account key pair in dir.
func NewPKI(dir string) (*PKI, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir}
	var err error
	if p.CA, err = p.newCA("ca", "macvz-e2e-ca"); err != nil {
		return nil, err
	}
	if p.FrontProxyCA, err = p.newCA("front-proxy-ca", "macvz-e2e-front-proxy-ca"); err != nil {
		return nil, err
	}
	// RSA: the key type every service-account token verifier takes.
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	if err != nil {
		return nil, err
	}
	p.SAKey, p.SAPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	if err := os.WriteFile(p.SAKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(sa)}), 0o600); err != nil {
		return nil, err
	}
	if err := os.WriteFile(p.SAPub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o644); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *PKI) newCA(name, cn string) (*CertKey, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	return p.issue(name, tmpl, nil)
}

// ClientCert issues a client certificate signed by the cluster CA:
// Kubernetes reads the user from the CN and the groups from the O's.
func (p *PKI) ClientCert(name, cn string, groups ...string) (*CertKey, error) {
	return p.clientCert(p.CA, name, cn, groups...)
}

// FrontProxyClient is the apiserver's client certificate for aggregated
// APIs, signed by the front-proxy CA.
func (p *PKI) FrontProxyClient() (*CertKey, error) {
	return p.clientCert(p.FrontProxyCA, "front-proxy-client", "front-proxy-client")
}

func (p *PKI) clientCert(ca *CertKey, name, cn string, groups ...string) (*CertKey, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn, Organization: groups},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	return p.issue(name, tmpl, ca)
}

// ServingCert issues a TLS server certificate signed by the cluster CA
// for the names and addresses given.
func (p *PKI) ServingCert(name, cn string, dnsNames []string, ips []net.IP) (*CertKey, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    dnsNames,
		IPAddresses: ips,
	}
	return p.issue(name, tmpl, p.CA)
}

// issue makes a key, signs tmpl with ca (nil: self-signed) and writes
// <name>.crt and <name>.key.
func (p *PKI) issue(name string, tmpl *x509.Certificate, ca *CertKey) (*CertKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(7 * 24 * time.Hour)
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	ck := &CertKey{
		Cert:     cert,
		Key:      key,
		CertPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CertFile: filepath.Join(p.Dir, name+".crt"),
		KeyFile:  filepath.Join(p.Dir, name+".key"),
	}
	if err := os.WriteFile(ck.CertFile, ck.CertPEM, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(ck.KeyFile, ck.KeyPEM, 0o600); err != nil {
		return nil, err
	}
	return ck, nil
}

// WriteKubeconfig writes a kubeconfig for server (https://host:port)
// that trusts the cluster CA and authenticates with client, everything
// embedded.
func (p *PKI) WriteKubeconfig(path, server, user string, client *CertKey) error {
	b64 := base64.StdEncoding.EncodeToString
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: macvz-e2e
  cluster:
    server: %s
    certificate-authority-data: %s
users:
- name: %s
  user:
    client-certificate-data: %s
    client-key-data: %s
contexts:
- name: %s@macvz-e2e
  context:
    cluster: macvz-e2e
    user: %s
current-context: %s@macvz-e2e
`, server, b64(p.CA.CertPEM), user, b64(client.CertPEM), b64(client.KeyPEM), user, user, user)
	return os.WriteFile(path, []byte(cfg), 0o600)
}
