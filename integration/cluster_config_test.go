//go:build linux

package integration

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/macvz/macvz/integration/guest"
)

func init() {
	registerClusterScenario(50, "config", (*clusterTest).testConfig)
	registerClusterScenario(60, "jobs", (*clusterTest).testJobs)
}

// cfgPod is the part of a v1.Pod the config and jobs scenarios read.
type cfgPod struct {
	Metadata struct {
		Name   string            `json:"name"`
		UID    string            `json:"uid"`
		Labels map[string]string `json:"labels"`
	} `json:"metadata"`
	Spec struct {
		NodeName string `json:"nodeName"`
	} `json:"spec"`
	Status struct {
		Phase             string             `json:"phase"`
		Reason            string             `json:"reason"`
		Message           string             `json:"message"`
		PodIP             string             `json:"podIP"`
		Conditions        []clusterCondition `json:"conditions"`
		ContainerStatuses []struct {
			Name         string `json:"name"`
			RestartCount int    `json:"restartCount"`
			State        struct {
				Waiting *struct {
					Reason  string `json:"reason"`
					Message string `json:"message"`
				} `json:"waiting"`
				Running *struct {
					StartedAt string `json:"startedAt"`
				} `json:"running"`
				Terminated *struct {
					ExitCode  int    `json:"exitCode"`
					Reason    string `json:"reason"`
					StartedAt string `json:"startedAt"`
				} `json:"terminated"`
			} `json:"state"`
		} `json:"containerStatuses"`
	} `json:"status"`
}

// summary is the pod's phase, reason and containers' states, for logs
// and failure messages.
func (p cfgPod) summary() string {
	s := fmt.Sprintf("pod %s on %q: phase %s", p.Metadata.Name, p.Spec.NodeName, p.Status.Phase)
	if p.Status.Reason != "" {
		s += fmt.Sprintf(" (%s: %s)", p.Status.Reason, p.Status.Message)
	}
	for _, cs := range p.Status.ContainerStatuses {
		switch st := cs.State; {
		case st.Waiting != nil:
			s += fmt.Sprintf("; %s waiting (%s: %s)", cs.Name, st.Waiting.Reason, st.Waiting.Message)
		case st.Running != nil:
			s += fmt.Sprintf("; %s running since %s", cs.Name, st.Running.StartedAt)
		case st.Terminated != nil:
			s += fmt.Sprintf("; %s terminated (exit %d, %s)", cs.Name, st.Terminated.ExitCode, st.Terminated.Reason)
		}
		s += fmt.Sprintf(", %d restarts", cs.RestartCount)
	}
	return s
}

// cfgGetPod is `kubectl get pod name -o json`; false when there is no
// such pod.
func (c *clusterTest) cfgGetPod(t testing.TB, name string) (cfgPod, bool) {
	t.Helper()
	var p cfgPod
	out, err := c.cp.Kubectl("get", "pod", name, "-o", "json", "--ignore-not-found")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if strings.TrimSpace(out) == "" {
		return p, false
	}
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatalf("kubectl get pod %s: %v\n%s", name, err, out)
	}
	return p, true
}

// cfgListPods is `kubectl get pods -l selector -o json`.
func (c *clusterTest) cfgListPods(t testing.TB, selector string) []cfgPod {
	t.Helper()
	var list struct {
		Items []cfgPod `json:"items"`
	}
	out := c.cp.MustKubectl(t, "get", "pods", "-l", selector, "-o", "json")
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("kubectl get pods -l %s: %v\n%s", selector, err, out)
	}
	return list.Items
}

// cfgWait polls cond every 2s until it holds; a node's kubelet or macvz
// exiting, or timeout, fails t with what was awaited, cond's last
// account of the state and the cluster's state (pods matching selector
// described).
func (c *clusterTest) cfgWait(t testing.TB, selector, what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		ok, state := cond()
		if ok {
			return time.Since(start)
		}
		for _, n := range c.nodes {
			if ok, how := n.Kubelet.Exited(); ok {
				c.fatal(t, selector, "waiting for %s: node %s's kubelet exited (%s); last state: %s", what, n.Name, how, state)
			}
			if ok, how := n.Macvz.Exited(); ok {
				c.fatal(t, selector, "waiting for %s: node %s's macvz exited (%s); last state: %s", what, n.Name, how, state)
			}
		}
		if time.Since(start) > timeout {
			c.fatal(t, selector, "%s: not after %v; last state: %s", what, timeout, state)
		}
		time.Sleep(2 * time.Second)
	}
}

// cfgExec is `kubectl exec pod -- args...` (apiserver → kubelet →
// macvz's streaming server → the guest), its stdout.
func (c *clusterTest) cfgExec(pod string, args ...string) (string, error) {
	return c.cp.Kubectl(append([]string{"exec", pod, "--"}, args...)...)
}

// cfgDelete deletes objects (kind/name) and waits for them and the pods
// matching selector to be gone: the cleanup of a scenario, so the later
// ones start with the nodes as they were.
func (c *clusterTest) cfgDelete(t testing.TB, selector string, objects ...string) {
	t.Helper()
	args := append([]string{"delete", "--ignore-not-found", "--wait=true", "--timeout=2m", "--cascade=foreground"}, objects...)
	if out, err := c.cp.Kubectl(args...); err != nil {
		t.Errorf("cleanup: %v\n%s", err, out)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		out, err := c.cp.Kubectl("get", "pods", "-l", selector, "-o", "name")
		if err == nil && strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("cleanup: pods -l %s still there 2m after deleting %s: %s (%v)\n%s", selector, strings.Join(objects, " "), out, err, c.cp.Dump(selector))
			return
		}
		time.Sleep(2 * time.Second)
	}
}

// plainImage is the plain test guest's ref (no default process), from
// the same registry as the httpd one.
func (c *clusterTest) plainImage() string {
	return strings.TrimSuffix(c.httpd, guest.RefHTTPD) + guest.RefPlain
}

// configManifest: a Secret and a ConfigMap, and a pod on node-a with
// them as volumes and as environment (envFrom and valueFrom), the
// downward API as environment and as a volume, and the default
// service-account token (automounted).
const configManifest = `apiVersion: v1
kind: Secret
metadata:
  name: cfg-secret
  namespace: default
  labels:
    e2e: config
type: Opaque
stringData:
  password: s3cret-from-the-apiserver
  username: macvz
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: cfg-map
  namespace: default
  labels:
    e2e: config
data:
  greeting: hello from a configmap
  color: blue
---
apiVersion: v1
kind: Pod
metadata:
  name: cfg
  namespace: default
  labels:
    e2e: config
    tier: one
  annotations:
    macvz.io/note: set by the test
spec:
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  terminationGracePeriodSeconds: 5
  containers:
  - name: app
    image: %[1]s
    command: ["sh", "-c", "echo started; env | sort; exec sleep 3600"]
    envFrom:
    - prefix: CM_
      configMapRef:
        name: cfg-map
    - prefix: SECRET_
      secretRef:
        name: cfg-secret
    env:
    - name: GREETING
      valueFrom:
        configMapKeyRef:
          name: cfg-map
          key: greeting
    - name: PASSWORD
      valueFrom:
        secretKeyRef:
          name: cfg-secret
          key: password
    - name: POD_NAME
      valueFrom:
        fieldRef:
          fieldPath: metadata.name
    - name: POD_NAMESPACE
      valueFrom:
        fieldRef:
          fieldPath: metadata.namespace
    - name: NODE_NAME
      valueFrom:
        fieldRef:
          fieldPath: spec.nodeName
    - name: POD_IP
      valueFrom:
        fieldRef:
          fieldPath: status.podIP
    volumeMounts:
    - name: map
      mountPath: /etc/cfg/map
    - name: secret
      mountPath: /etc/cfg/secret
      readOnly: true
    - name: podinfo
      mountPath: /etc/podinfo
  volumes:
  - name: map
    configMap:
      name: cfg-map
  - name: secret
    secret:
      secretName: cfg-secret
      defaultMode: 0400
  - name: podinfo
    downwardAPI:
      items:
      - path: labels
        fieldRef:
          fieldPath: metadata.labels
      - path: annotations
        fieldRef:
          fieldPath: metadata.annotations
`

// saDir is where kubelet mounts the default service-account token.
const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// testConfig: a Secret, a ConfigMap, the service-account token and the
// downward API, all read inside the guest through kubectl exec; the
// ConfigMap updated and a label changed while the pod runs, the new
// values appearing in the guest's mounted files.
func (c *clusterTest) testConfig(t *testing.T) {
	const sel, node = "e2e=config", "node-a"
	t.Cleanup(func() { c.cfgDelete(t, sel, "pod/cfg", "configmap/cfg-map", "secret/cfg-secret") })
	start := time.Now()
	c.cp.Apply(t, fmt.Sprintf(configManifest, c.plainImage(), node))
	var pod cfgPod
	took := c.cfgWait(t, sel, "pod cfg Ready on "+node, 5*time.Minute, func() (bool, string) {
		p, ok := c.cfgGetPod(t, "cfg")
		pod = p
		return ok && condition(p.Status.Conditions, "Ready").Status == "True", p.summary()
	})
	t.Logf("pod cfg applied → Ready on %s in %v (IP %s)", pod.Spec.NodeName, took.Round(10*time.Millisecond), pod.Status.PodIP)
	if pod.Spec.NodeName != node {
		c.fatal(t, sel, "pod cfg runs on %q, want %s (its nodeSelector)", pod.Spec.NodeName, node)
	}
	logs := func() string {
		out, err := c.cp.Kubectl("logs", "cfg")
		if err != nil {
			return err.Error()
		}
		return out
	}
	// read reads a file in the guest through its path. When that fails
	// it reads the file kubelet's atomic writer keeps under its
	// symlinks (dir/..<timestamp>/key, what dir/key leads to through
	// ..data), so the scenario checks the rest (contents, updates);
	// underneath says which way it went.
	read := func(path string) (out string, underneath bool, err error) {
		if out, err = c.cfgExec("cfg", "cat", path); err == nil {
			return out, false, nil
		}
		under, uerr := c.cfgExec("cfg", "sh", "-c", `cat "${1%/*}"/..[0-9]*/"${1##*/}"`, "sh", path)
		if uerr != nil {
			return "", false, fmt.Errorf("%v; and under the symlinks (%s/..<timestamp>/%s): %v", err, filepath.Dir(path), filepath.Base(path), uerr)
		}
		return under, true, err
	}
	// cat is read reporting a failure to read through the path, with
	// what the guest sees of the volume (once per volume).
	diagnosed := map[string]bool{}
	cat := func(t *testing.T, path string) string {
		t.Helper()
		out, underneath, err := read(path)
		if err == nil {
			return out
		}
		hint, diag := "", ""
		if strings.Contains(err.Error(), "Too many levels of symbolic links") && !diagnosed["hint"] {
			diagnosed["hint"] = true
			hint = "\n" + symlinkHint
		}
		if dir := filepath.Dir(path); !diagnosed[dir] {
			diagnosed[dir] = true
			diag = "\n" + c.cfgVolumeDiag("cfg", path)
		}
		if underneath {
			t.Errorf("in the guest of pod cfg: reading %s: %v (the file under the symlinks has what it should: the rest is checked with it)%s%s", path, err, hint, diag)
		} else {
			t.Errorf("in the guest of pod cfg: reading %s: %v%s%s", path, err, hint, diag)
		}
		return out
	}

	t.Run("env", func(t *testing.T) {
		out, err := c.cfgExec("cfg", "env")
		if err != nil {
			c.fatal(t, sel, "kubectl exec cfg -- env: %v\n%s", err, out)
		}
		env := map[string]string{}
		for _, l := range strings.Split(out, "\n") {
			if k, v, ok := strings.Cut(l, "="); ok {
				env[k] = v
			}
		}
		want := map[string]string{
			"GREETING":        "hello from a configmap",
			"PASSWORD":        "s3cret-from-the-apiserver",
			"CM_greeting":     "hello from a configmap",
			"CM_color":        "blue",
			"SECRET_password": "s3cret-from-the-apiserver",
			"SECRET_username": "macvz",
			"POD_NAME":        "cfg",
			"POD_NAMESPACE":   "default",
			"NODE_NAME":       node,
			"POD_IP":          pod.Status.PodIP,
		}
		for _, k := range slices.Sorted(maps.Keys(want)) {
			if env[k] != want[k] {
				t.Errorf("in the guest (kubectl exec cfg -- env): %s=%q, want %q\nthe container's own environment (its log):\n%s\nexec's environment:\n%s",
					k, env[k], want[k], logs(), out)
			}
		}
		// The pod IP kubelet put in the environment is the guest's.
		if addrs, err := c.cfgExec("cfg", "ip", "-4", "addr"); err != nil || !strings.Contains(addrs, "inet "+pod.Status.PodIP+"/") {
			t.Errorf("the guest's addresses (ip -4 addr) do not have the pod's IP %s: %v\n%s", pod.Status.PodIP, err, addrs)
		}
	})

	t.Run("volumes", func(t *testing.T) {
		for _, f := range [][2]string{
			{"/etc/cfg/map/greeting", "hello from a configmap"},
			{"/etc/cfg/map/color", "blue"},
			{"/etc/cfg/secret/password", "s3cret-from-the-apiserver"},
			{"/etc/cfg/secret/username", "macvz"},
		} {
			if got := cat(t, f[0]); got != f[1] {
				t.Errorf("in the guest: %s is %q, want %q", f[0], got, f[1])
			}
		}
		// defaultMode 0400 (the files are kubelet's atomic-writer
		// symlinks into ..data: -L stats the file; under the symlinks
		// if they cannot be followed, which is reported above).
		if out, err := c.cfgExec("cfg", "sh", "-c", `stat -L -c %a "$1" 2>/dev/null || stat -c %a "${1%/*}"/..[0-9]*/"${1##*/}"`, "sh", "/etc/cfg/secret/password"); err != nil || strings.TrimSpace(out) != "400" {
			ls, _ := c.cfgExec("cfg", "ls", "-la", "/etc/cfg/secret", "/etc/cfg/secret/..data/")
			t.Errorf("in the guest: the Secret's file has mode %q (%v), want 400 (defaultMode 0400)\n%s", strings.TrimSpace(out), err, ls)
		}
		if got := cat(t, "/etc/podinfo/labels"); got != "e2e=\"config\"\ntier=\"one\"" {
			t.Errorf("in the guest: the downwardAPI volume's labels are %q, want e2e=\"config\" and tier=\"one\"", got)
		}
		if got := cat(t, "/etc/podinfo/annotations"); !strings.Contains(got, `macvz.io/note="set by the test"`) {
			t.Errorf("in the guest: the downwardAPI volume's annotations %q do not have macvz.io/note=\"set by the test\"", got)
		}
	})

	t.Run("serviceaccount", func(t *testing.T) {
		token := strings.TrimSpace(cat(t, saDir+"/token"))
		if token == "" {
			t.FailNow()
		}
		if got := cat(t, saDir+"/namespace"); got != "default" {
			t.Errorf("in the guest: %s/namespace is %q, want default", saDir, got)
		}
		// ca.crt is the cluster CA (kube-root-ca.crt, from the
		// controller-manager's --root-ca-file).
		caPEM := cat(t, saDir+"/ca.crt")
		if blk, _ := pem.Decode([]byte(caPEM)); blk == nil {
			t.Errorf("in the guest: %s/ca.crt is not PEM: %q", saDir, caPEM)
		} else if cert, err := x509.ParseCertificate(blk.Bytes); err != nil || !cert.Equal(c.cp.PKI.CA.Cert) {
			t.Errorf("in the guest: %s/ca.crt is not the cluster CA (%v): %q", saDir, err, caPEM)
		}

		// A JWT: header.payload.signature, the payload naming the pod's
		// service account, the pod and the node.
		parts := strings.Split(token, ".")
		if len(parts) != 3 {
			c.fatal(t, sel, "in the guest: %s/token is not a JWT (%d dot-separated parts): %q", saDir, len(parts), token)
		}
		payload, err := base64.RawURLEncoding.DecodeString(parts[1])
		var claims struct {
			Sub string `json:"sub"`
			Iss string `json:"iss"`
			Aud any    `json:"aud"`
			Exp int64  `json:"exp"`
			K8s struct {
				Namespace string `json:"namespace"`
				Pod       struct {
					Name string `json:"name"`
					UID  string `json:"uid"`
				} `json:"pod"`
				Node *struct {
					Name string `json:"name"`
				} `json:"node"`
			} `json:"kubernetes.io"`
		}
		if err == nil {
			err = json.Unmarshal(payload, &claims)
		}
		if err != nil {
			c.fatal(t, sel, "in the guest: %s/token's payload: %v\n%s", saDir, err, payload)
		}
		t.Logf("token claims: %s", payload)
		if want := "system:serviceaccount:default:default"; claims.Sub != want {
			t.Errorf("the token's sub is %q, want %q (claims %s)", claims.Sub, want, payload)
		}
		if claims.K8s.Pod.Name != "cfg" || claims.K8s.Pod.UID != pod.Metadata.UID || claims.K8s.Namespace != "default" {
			t.Errorf("the token is bound to pod %s/%s (uid %s), want default/cfg (uid %s); claims %s",
				claims.K8s.Namespace, claims.K8s.Pod.Name, claims.K8s.Pod.UID, pod.Metadata.UID, payload)
		}
		if claims.K8s.Node != nil && claims.K8s.Node.Name != node {
			t.Errorf("the token names node %q, want %s; claims %s", claims.K8s.Node.Name, node, payload)
		}
		if exp := time.Unix(claims.Exp, 0); time.Until(exp) < 10*time.Minute {
			t.Errorf("the token expires at %v, in less than 10 minutes", exp)
		}

		// It authenticates: kubectl with only that token (no client
		// certificate) and the guest's ca.crt as the CA.
		who, err := c.kubectlToken(t, token, caPEM, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
		if err != nil || strings.TrimSpace(who) != claims.Sub {
			t.Errorf("kubectl --token <the guest's token> auth whoami: %q, %v; want %s", who, err, claims.Sub)
		} else {
			t.Logf("the guest's token authenticates at the apiserver as %s", who)
		}
		// And is checked: a forged signature is refused.
		sig := []byte(parts[2])
		sig[len(sig)/2] ^= 1
		forged := parts[0] + "." + parts[1] + "." + string(sig)
		if out, err := c.kubectlToken(t, forged, caPEM, "auth", "whoami"); err == nil || !strings.Contains(err.Error(), "Unauthorized") {
			t.Errorf("kubectl --token <the token with its signature altered> auth whoami: %q, %v; want Unauthorized", out, err)
		}
	})

	t.Run("updates", func(t *testing.T) {
		// A ConfigMap volume is updated by kubelet's periodic pod sync
		// (syncFrequency 1m, plus up to half of it as jitter); a label
		// change is a pod update, which syncs the pod at once. One after
		// the other: the label's sync would refresh the ConfigMap too.
		for _, path := range []string{"/etc/cfg/map/greeting", "/etc/podinfo/labels"} {
			if _, underneath, err := read(path); err != nil && !underneath {
				c.fatal(t, sel, "the guest cannot read %s at all, so no update can be seen in it: %v\n%s", path, err, c.cfgVolumeDiag("cfg", path))
			}
		}
		// read's failures to go through the path are reported in the
		// volumes subtest; here only the contents count.
		waitContent := func(what, path, want, cmd string, args ...string) time.Duration {
			t.Helper()
			start := time.Now()
			c.cp.MustKubectl(t, append([]string{cmd}, args...)...)
			applied := time.Since(start)
			return applied + c.cfgWait(t, sel, what+" in the guest's "+path, 2*time.Minute, func() (bool, string) {
				got, underneath, err := read(path)
				if err != nil && !underneath {
					return false, fmt.Sprintf("%s: %v", path, err)
				}
				return strings.Contains(got, want), fmt.Sprintf("%s is %q, want %q", path, got, want)
			})
		}
		mapAt := waitContent("the ConfigMap's new value", "/etc/cfg/map/greeting", "updated while running",
			"patch", "configmap", "cfg-map", "--type=merge", "-p", `{"data":{"greeting":"updated while running"}}`)
		labelAt := waitContent("the pod's new label", "/etc/podinfo/labels", `tier="two"`,
			"label", "pod", "cfg", "tier=two", "--overwrite")
		t.Logf("in the guest: the updated ConfigMap value after %v, the changed label after %v",
			mapAt.Round(100*time.Millisecond), labelAt.Round(100*time.Millisecond))
		// The environment stays what it was at the container's start.
		if out, err := c.cfgExec("cfg", "sh", "-c", "echo $GREETING"); err != nil || strings.TrimSpace(out) != "hello from a configmap" {
			t.Errorf("in the guest after the update: GREETING=%q (%v), want the value at the start, \"hello from a configmap\"", out, err)
		}
		if p, _ := c.cfgGetPod(t, "cfg"); len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].RestartCount != 0 || p.Status.Phase != "Running" {
			t.Errorf("after the updates: %s; want Running with no restart", p.summary())
		}
	})
	t.Logf("config scenario: %v", time.Since(start).Round(10*time.Millisecond))
}

// symlinkHint explains the guest's ELOOP on kubelet's volumes.
const symlinkHint = `kubelet's ConfigMap, Secret, downwardAPI and projected (service-account token) volumes are symlinks made on the host ` +
	`(key → ..data/key, ..data → ..<timestamp>); the guest sees them through the sandbox's 9p share, which QEMU exports with ` +
	`security_model=mapped-xattr (runtime/qemu/driver.go). In that model QEMU's readlink reads a symlink's target from the ` +
	`content of a regular file (how it stores the guest's own symlinks), opening it O_NOFOLLOW: a real symlink made on the host ` +
	`fails with ELOOP. The guest can list and lstat them but not follow them.`

// cfgVolumeDiag is what the guest of pod sees of the volume holding
// path: the directory's listing, where its symlinks lead (kubelet's
// atomic writer makes key → ..data/key, ..data → ..<timestamp>), and
// the mount, for a failure message.
func (c *clusterTest) cfgVolumeDiag(pod, path string) string {
	dir := filepath.Dir(path)
	script := `ls -la "$1"; for f in "$2" "$1/..data"; do printf 'readlink %s: ' "$f"; readlink "$f" 2>&1 || echo "(failed)"; done; grep " $1 " /proc/mounts`
	out, err := c.cfgExec(pod, "sh", "-c", script, "sh", dir, path)
	if err != nil {
		out += fmt.Sprintf("(%v)", err)
	}
	return fmt.Sprintf("in the guest of pod %s:\n%s", pod, out)
}

// kubectlToken runs kubectl in the control plane's namespace with no
// credentials but token, trusting caPEM.
func (c *clusterTest) kubectlToken(t testing.TB, token, caPEM string, args ...string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	ca, kubeconfig := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "empty.conf")
	if err := os.WriteFile(ca, []byte(caPEM), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kubeconfig, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append([]string{"--net=" + c.cp.NS.Path, c.cp.Opts.Bins.Kubectl, "--kubeconfig", kubeconfig,
		"--server", c.cp.Server, "--certificate-authority", ca, "--token", token}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("kubectl --token ... %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// jobManifest is a Job of one pod of the plain guest running script on
// node, retried up to backoffLimit times.
const jobManifest = `apiVersion: batch/v1
kind: Job
metadata:
  name: %[1]s
  namespace: default
  labels:
    e2e: jobs
spec:
  backoffLimit: %[4]d
  template:
    metadata:
      labels:
        e2e: jobs
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 5
      nodeSelector:
        kubernetes.io/hostname: %[3]s
      containers:
      - name: main
        image: %[2]s
        command: ["sh", "-c", %[5]q]
`

// deadlineManifest is a pod kubelet must end after 10 seconds.
const deadlineManifest = `apiVersion: v1
kind: Pod
metadata:
  name: deadline
  namespace: default
  labels:
    e2e: jobs
spec:
  activeDeadlineSeconds: 10
  restartPolicy: Never
  terminationGracePeriodSeconds: 5
  nodeSelector:
    kubernetes.io/hostname: %[2]s
  containers:
  - name: main
    image: %[1]s
    command: ["sleep", "3600"]
`

// cfgJob is the part of a batch/v1 Job the jobs scenario reads.
type cfgJob struct {
	Status struct {
		Active     int                `json:"active"`
		Succeeded  int                `json:"succeeded"`
		Failed     int                `json:"failed"`
		Conditions []clusterCondition `json:"conditions"`
	} `json:"status"`
}

func (c *clusterTest) cfgGetJob(t testing.TB, name string) cfgJob {
	t.Helper()
	var j cfgJob
	out := c.cp.MustKubectl(t, "get", "job", name, "-o", "json")
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("kubectl get job %s: %v\n%s", name, err, out)
	}
	return j
}

func (j cfgJob) summary() string {
	var conds []string
	for _, c := range j.Status.Conditions {
		conds = append(conds, fmt.Sprintf("%s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message))
	}
	return fmt.Sprintf("active %d, succeeded %d, failed %d, conditions [%s]", j.Status.Active, j.Status.Succeeded, j.Status.Failed, strings.Join(conds, "; "))
}

// testJobs: a Job that completes (node-b), one whose pod fails every
// time and runs out of retries (node-a), and a pod on node-b that
// exceeds activeDeadlineSeconds: kubelet ends it and its VM goes.
func (c *clusterTest) testJobs(t *testing.T) {
	const sel = "e2e=jobs"
	t.Cleanup(func() { c.cfgDelete(t, sel, "job/job-ok", "job/job-fail", "pod/deadline") })
	start := time.Now()
	plain := c.plainImage()
	c.cp.Apply(t, fmt.Sprintf(jobManifest, "job-ok", plain, "node-b", 0, "echo done; exit 0"))
	failApplied := time.Now()
	c.cp.Apply(t, fmt.Sprintf(jobManifest, "job-fail", plain, "node-a", 1, "echo failing; exit 1"))

	var okJob cfgJob
	took := c.cfgWait(t, sel, "Job job-ok Complete", 5*time.Minute, func() (bool, string) {
		okJob = c.cfgGetJob(t, "job-ok")
		return condition(okJob.Status.Conditions, "Complete").Status == "True", okJob.summary()
	})
	t.Logf("Job job-ok applied → Complete in %v", took.Round(10*time.Millisecond))
	if okJob.Status.Succeeded != 1 || okJob.Status.Failed != 0 {
		c.fatal(t, sel, "Job job-ok: %s; want succeeded 1, failed 0", okJob.summary())
	}
	pods := c.cfgListPods(t, "job-name=job-ok")
	if len(pods) != 1 {
		c.fatal(t, sel, "Job job-ok has %d pods, want 1", len(pods))
	}
	p := pods[0]
	if p.Status.Phase != "Succeeded" || p.Spec.NodeName != "node-b" || len(p.Status.ContainerStatuses) != 1 ||
		p.Status.ContainerStatuses[0].State.Terminated == nil || p.Status.ContainerStatuses[0].State.Terminated.ExitCode != 0 {
		c.fatal(t, sel, "Job job-ok's %s; want phase Succeeded on node-b, its container terminated with exit code 0", p.summary())
	}
	if out, err := c.cp.Kubectl("logs", "job/job-ok"); err != nil || strings.TrimSpace(out) != "done" {
		t.Errorf("kubectl logs job/job-ok: %q, %v; want \"done\"", out, err)
	}

	// The plain image is on node-b now: the deadline pod's 10 seconds
	// (counted from kubelet's start of the pod) go to the VM's boot and
	// its sleep, not to a pull.
	c.cp.Apply(t, fmt.Sprintf(deadlineManifest, plain, "node-b"))
	nodeB := c.node("node-b")
	var sandbox string
	var sawQEMU, sawRunning bool
	var dl cfgPod
	took = c.cfgWait(t, sel, "pod deadline Failed (activeDeadlineSeconds 10)", 3*time.Minute, func() (bool, string) {
		if sandbox == "" {
			out, err := nodeB.Crictl("pods", "-q", "--name", "^deadline$", "--namespace", "default")
			if id := strings.TrimSpace(out); err == nil && id != "" && !strings.Contains(id, "\n") {
				sandbox = id
			}
		}
		if sandbox != "" && !sawQEMU {
			sawQEMU = len(qemuOf(sandbox)) > 0
		}
		dl, _ = c.cfgGetPod(t, "deadline")
		if len(dl.Status.ContainerStatuses) == 1 && dl.Status.ContainerStatuses[0].State.Running != nil {
			sawRunning = true
		}
		return dl.Status.Phase == "Failed", fmt.Sprintf("%s; sandbox %q", dl.summary(), sandbox)
	})
	t.Logf("pod deadline applied → Failed in %v (%s; running seen: %v, its VM seen: %v)", took.Round(10*time.Millisecond), dl.summary(), sawRunning, sawQEMU)
	if dl.Status.Reason != "DeadlineExceeded" || dl.Spec.NodeName != "node-b" {
		c.fatal(t, sel, "%s; want on node-b, reason DeadlineExceeded", dl.summary())
	}
	// It did run (the VM booted and sleep started) before kubelet ended
	// it: a container ended by kubelet, not one that never started.
	if cs := dl.Status.ContainerStatuses; len(cs) != 1 || cs[0].State.Terminated == nil || cs[0].State.Terminated.StartedAt == "" {
		t.Errorf("%s; want its container terminated after having started (the deadline should have ended a running sleep)", dl.summary())
	}
	if sandbox == "" {
		out, _ := nodeB.Crictl("pods", "-q", "--name", "^deadline$")
		c.fatal(t, sel, "no sandbox of pod deadline seen on node-b (crictl pods --name ^deadline$: %q)", out)
	}
	if !sawQEMU {
		t.Logf("the deadline pod's VM was never seen running (it booted and was stopped between two polls)")
	}
	// Kubelet stops the sandbox of a pod it ended: its VM goes; the
	// sandbox stays NotReady until the pod is deleted (or is removed).
	var state string
	gone := c.cfgWait(t, sel, "pod deadline's sandbox "+sandbox+" NotReady or removed on node-b, and no QEMU left for it", 90*time.Second, func() (bool, string) {
		out, err := nodeB.Crictl("pods", "-o", "json", "--id", sandbox)
		var list struct {
			Items []struct {
				State string `json:"state"`
			} `json:"items"`
		}
		if err == nil {
			err = json.Unmarshal([]byte(out), &list)
		}
		switch {
		case err != nil:
			state = fmt.Sprintf("crictl pods: %v: %s", err, out)
		case len(list.Items) == 0:
			state = "removed"
		default:
			state = list.Items[0].State
		}
		procs := qemuOf(sandbox)
		return (state == "removed" || state == "SANDBOX_NOTREADY") && len(procs) == 0,
			fmt.Sprintf("sandbox %s; QEMU processes for it: %q", state, procs)
	})
	t.Logf("pod deadline: sandbox %s %s and its VM gone %v after the pod was Failed", sandbox, state, gone.Round(10*time.Millisecond))

	var failJob cfgJob
	c.cfgWait(t, sel, "Job job-fail Failed", 5*time.Minute, func() (bool, string) {
		failJob = c.cfgGetJob(t, "job-fail")
		return condition(failJob.Status.Conditions, "Failed").Status == "True", failJob.summary()
	})
	t.Logf("Job job-fail applied → Failed in at most %v: %s", time.Since(failApplied).Round(10*time.Millisecond), failJob.summary())
	if r := condition(failJob.Status.Conditions, "Failed").Reason; r != "BackoffLimitExceeded" {
		t.Errorf("Job job-fail: Failed with reason %q, want BackoffLimitExceeded (%s)", r, failJob.summary())
	}
	if failJob.Status.Failed != 2 || failJob.Status.Succeeded != 0 {
		t.Errorf("Job job-fail: %s; want failed 2 (backoffLimit 1: the pod and one retry), succeeded 0", failJob.summary())
	}
	pods = c.cfgListPods(t, "job-name=job-fail")
	if len(pods) != 2 {
		t.Errorf("Job job-fail has %d pods, want 2 (the first and one retry)", len(pods))
	}
	for _, p := range pods {
		if p.Status.Phase != "Failed" || p.Spec.NodeName != "node-a" || len(p.Status.ContainerStatuses) != 1 ||
			p.Status.ContainerStatuses[0].State.Terminated == nil || p.Status.ContainerStatuses[0].State.Terminated.ExitCode != 1 {
			t.Errorf("Job job-fail's %s; want phase Failed on node-a, its container terminated with exit code 1", p.summary())
		}
		if out, err := c.cp.Kubectl("logs", p.Metadata.Name); err != nil || strings.TrimSpace(out) != "failing" {
			t.Errorf("kubectl logs %s: %q, %v; want \"failing\"", p.Metadata.Name, out, err)
		}
	}
	t.Logf("jobs scenario: %v", time.Since(start).Round(10*time.Millisecond))
}

// qemuOf lists the QEMU processes of a sandbox (QEMU runs with -name
// <sandbox ID>) as "pid: cmdline".
func qemuOf(sandbox string) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) == 0 || !strings.Contains(filepath.Base(args[0]), "qemu") {
			continue
		}
		if i := slices.Index(args, "-name"); i >= 0 && i+1 < len(args) && strings.HasPrefix(args[i+1], sandbox) {
			out = append(out, e.Name()+": "+strings.Join(args, " "))
		}
	}
	return out
}
