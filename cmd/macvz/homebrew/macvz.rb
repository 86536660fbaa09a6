# Homebrew formula for macvz on an Apple silicon Mac, built from source
# (README, "Install"). It has never run: nothing here has a Mac, so it is
# kept valid Ruby (`ruby -c`) and follows the Makefile's `build`, `sign` and
# `install` targets, which are what is tested. There is no release yet, so it
# builds the main branch (--HEAD). From a checkout:
#
#   brew tap-new "$USER/macvz"
#   cp cmd/macvz/homebrew/macvz.rb "$(brew --repository "$USER/macvz")/Formula/"
#   brew install --HEAD "$USER/macvz/macvz"
#   sudo brew services start macvz
class Macvz < Formula
  desc "Kubernetes CRI runtime whose pods are virtual machines"
  homepage "https://github.com/macvz/macvz"
  license "Apache-2.0"
  head "https://github.com/macvz/macvz.git", branch: "main"

  depends_on "go" => :build
  # Virtualization.framework's macOS guests need Apple silicon.
  depends_on arch: :arm64
  depends_on :macos

  def install
    # The daemon and the shim host VMs: cgo, for Virtualization.framework.
    ENV["CGO_ENABLED"] = "1"
    system "go", "build", *std_go_args(output: bin/"macvz", ldflags: "-s -w"), "./cmd/macvz"
    system "go", "build", *std_go_args(output: bin/"macvz-shim", ldflags: "-s -w"), "./cmd/macvz-shim"
    # The agent runs inside macOS guests: `macvz image install-agent` takes
    # the macvz-agent next to macvz. The CNI plugins go where the default
    # configuration below points network.bin_dirs (the daemon's own default,
    # /opt/macvz/bin, is outside Homebrew's prefix).
    with_env(CGO_ENABLED: "0", GOOS: "darwin", GOARCH: "arm64") do
      system "go", "build", *std_go_args(output: bin/"macvz-agent", ldflags: "-s -w"), "./cmd/macvz-agent"
      system "go", "build", *std_go_args(output: libexec/"cni/macvz-net", ldflags: "-s -w"), "./cmd/macvz-net"
      system "go", "build", *std_go_args(output: libexec/"cni/host-local", ldflags: "-s -w"),
             "github.com/containernetworking/plugins/plugins/ipam/host-local"
    end
    # As `make sign`: ad hoc, with the virtualization entitlement and never
    # com.apple.vm.networking (macOS kills an ad-hoc binary that claims it).
    # Homebrew re-signs what it relocates keeping the entitlements.
    system "codesign", "--force", "--entitlements", "cmd/macvz-shim/macvz.entitlements", "-s", "-",
           bin/"macvz-shim", bin/"macvz"
    # The repository's launchd job (AbandonProcessGroup), with this prefix's
    # paths, for those who prefer it to `brew services` (caveats).
    plist = File.read("cmd/macvz/launchd/io.macvz.macvz.plist")
    plist = plist.gsub("/usr/local/bin/macvz", "#{opt_bin}/macvz").gsub("/etc/macvz/", "#{etc}/macvz/")
    (prefix/"io.macvz.macvz.plist").write plist
  end

  # A configuration and a pod network only where there is none: a user's
  # are never overwritten (as `make install`).
  def post_install
    (etc/"macvz/net.d").mkpath
    config = etc/"macvz/config.toml"
    unless config.exist? || config.symlink?
      text = Utils.safe_popen_read(bin/"macvz", "config", "default")
      text = text.gsub("/etc/macvz/", "#{etc}/macvz/").gsub('"/opt/macvz/bin"', "\"#{opt_libexec}/cni\"")
      config.write text
    end
    net = etc/"macvz/net.d"
    return unless Dir["#{net}/*.{conflist,conf,json}"].empty?

    # socket_vmnet's shared network when its socket is there, else vmnet
    # NAT; `macvz config network` says on stderr which and why.
    (net/"10-macvz.conflist").write Utils.safe_popen_read(bin/"macvz", "config", "network")
  end

  # Runs as root (VMs, vmnet, the CRI socket under /var/run). The per-VM
  # shims start in their own session (setsid), so launchd stopping or
  # restarting the daemon leaves them and their VMs running and the next
  # daemon adopts them; the repository's plist adds AbandonProcessGroup,
  # which this DSL has no key for.
  service do
    run [opt_bin/"macvz", "serve", "--config", etc/"macvz/config.toml"]
    require_root true
    keep_alive true
    process_type :interactive
    log_path var/"log/macvz.log"
    error_log_path var/"log/macvz.log"
  end

  def caveats
    <<~EOS
      This formula has not been tried on a Mac yet (see the README).
      Start the daemon (as root: it runs VMs):
        sudo brew services start macvz
      or, with the repository's launchd job instead:
        sudo cp #{opt_prefix}/io.macvz.macvz.plist /Library/LaunchDaemons/
        sudo launchctl bootstrap system /Library/LaunchDaemons/io.macvz.macvz.plist
      Configuration: #{etc}/macvz/config.toml; log: #{var}/log/macvz.log
      Pods that talk to each other need socket_vmnet: brew install socket_vmnet
    EOS
  end

  test do
    assert_match "macvz", shell_output("#{bin}/macvz version")
    assert_match "bin_dirs", shell_output("#{bin}/macvz config default")
  end
end
