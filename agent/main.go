package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	sddaemon "github.com/coreos/go-systemd/v22/daemon"
	"github.com/google/nftables"
	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/heal"
	"github.com/parryhq/parry/firewall"
)

// ParseFlags' outcomes other than nil, for cmd/parryd to turn into exit
// codes: ErrUsage is a command-line error (exit 2); ErrVersion means
// --version was printed, as flag.ErrHelp means --help was (exit 0).
var (
	ErrUsage   = errors.New("usage")
	ErrVersion = errors.New("version printed")
)

// Main is parryd's process: flags, config, firewall connection, daemon,
// control socket, systemd notification, reload. cmd/parryd only wires it to
// os.Args and signals; tests can run it in-process too.
type Main struct {
	ConfigPath  string // --config; empty: DefaultConfigPath, optional
	Socket      string // --socket override
	StateDir    string // --state-dir override
	Table       string // --table override
	RemoveRules bool   // --remove-rules: delete the table and exit
	CheckConfig bool   // --check-config: validate the config and exit
	Rebuild     bool   // --rebuild-store: rebuild a corrupt store from the kernel and the audit log, and exit
	Logger      *slog.Logger
	Stderr      io.Writer
	Stdout      io.Writer // results of --rebuild-store; default os.Stdout

	Daemon *Daemon
	conn   *nftables.Conn
	ln     net.Listener
}

// ParseFlags reads parryd's command line. It never exits: with --help it
// prints the usage and returns flag.ErrHelp, with --version it prints the
// version and returns ErrVersion, and a bad command line is ErrUsage.
func (m *Main) ParseFlags(args []string) error {
	fs := flag.NewFlagSet("parryd", flag.ContinueOnError)
	if m.Stderr != nil {
		fs.SetOutput(m.Stderr)
	}
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `parryd: parry's daemon. Blocks IPs and CIDRs in its own nftables table,
with kernel-side expiry, a durable store and a hash-chained audit log.

Usage: parryd [flags]

Runs in the foreground (systemd: parry.service). Talk to it with the parry CLI.
Flags override the config file (default %s, optional).

`, DefaultConfigPath)
		fs.PrintDefaults()
	}
	fs.StringVar(&m.ConfigPath, "config", "", "config file (YAML; default "+DefaultConfigPath+" if it exists)")
	fs.StringVar(&m.Socket, "socket", "", "control socket path (default /run/parry/parry.sock)")
	fs.StringVar(&m.StateDir, "state-dir", "", "state directory: store.db, audit.log (default /var/lib/parry)")
	fs.StringVar(&m.Table, "table", "", "nftables table name in family inet (default parry)")
	fs.BoolVar(&m.RemoveRules, "remove-rules", false, "delete parry's nftables table and exit (package purge)")
	fs.BoolVar(&m.CheckConfig, "check-config", false, "validate the config file (and flags) and exit: 0 valid, 1 invalid (systemctl reload runs this first)")
	fs.BoolVar(&m.Rebuild, "rebuild-store", false, "rebuild a corrupt store.db from the kernel's table and the audit log (the corrupt file is kept aside) and exit; parryd must be stopped")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", ErrUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected argument %q", ErrUsage, fs.Arg(0))
	}
	if *version {
		fmt.Fprintln(m.out(), "parryd", Version)
		return ErrVersion
	}
	return nil
}

// stdout is where a one-shot command's result goes.
func (m *Main) stdout() io.Writer {
	if m.Stdout != nil {
		return m.Stdout
	}
	return os.Stdout
}

func (m *Main) out() io.Writer {
	if m.Stderr != nil {
		return m.Stderr
	}
	return os.Stderr
}

// LoadConfig reads the config file and applies the flag overrides.
func (m *Main) LoadConfig() (Config, error) {
	path, optional := m.ConfigPath, false
	if path == "" {
		path, optional = DefaultConfigPath, true
	}
	cfg, err := LoadConfig(path, optional)
	if err != nil {
		return cfg, err
	}
	if m.Socket != "" {
		cfg.Socket = m.Socket
	}
	if m.StateDir != "" {
		cfg.StateDir = m.StateDir
	}
	if m.Table != "" {
		cfg.Table = m.Table
	}
	return cfg, cfg.Validate()
}

func (m *Main) openFirewall(cfg Config) (*firewall.NFT, error) {
	conn, err := nftables.New(firewall.ConnOptions()...)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	m.conn = conn
	return firewall.New(conn, firewall.Config{Table: cfg.Table, Priority: cfg.Priority, Logger: m.Logger, Now: time.Now})
}

// Run starts the daemon and serves until ctx ends. READY=1 goes to systemd
// only once the table exists and the store is re-asserted into it.
func (m *Main) Run(ctx context.Context) error {
	if m.Logger == nil {
		m.Logger = m.defaultLogger()
	}
	cfg, err := m.LoadConfig()
	if err != nil {
		return err
	}
	if m.CheckConfig {
		fmt.Fprintln(m.out(), "parryd: config ok")
		return nil
	}
	if m.Rebuild {
		rep, err := m.rebuildStore(cfg)
		if err != nil {
			return err
		}
		fmt.Fprintln(m.stdout(), rep)
		return nil
	}
	fw, err := m.openFirewall(cfg)
	if err != nil {
		return err
	}
	if m.RemoveRules {
		if err := fw.Remove(); err != nil {
			return fmt.Errorf("remove table inet %s: %w", cfg.Table, err)
		}
		m.Logger.Info("removed nftables table", "table", cfg.Table)
		return nil
	}
	// Take the control socket before touching the table: a second parryd
	// started by mistake (same socket, another state dir) must stop here,
	// not re-assert its own empty store and allowlist over the running one's.
	// Clients that connect now wait in the backlog until Serve; Close
	// closes it if Run fails before.
	if m.ln, err = m.listener(cfg); err != nil {
		return err
	}
	d, err := New(cfg, Options{Firewall: TimeApply(fw), Logger: m.Logger, Sweeper: func() (heal.ElementReader, func(), error) {
		conn, err := nftables.New(nftables.AsLasting())
		if err != nil {
			return nil, nil, err
		}
		r, err := firewall.New(conn, firewall.Config{Table: cfg.Table, Priority: cfg.Priority, Logger: m.Logger})
		if err != nil {
			conn.CloseLasting()
			return nil, nil, err
		}
		return r, func() { _ = conn.CloseLasting() }, nil
	}})
	if err != nil {
		return m.corruptStore(cfg, err)
	}
	m.Daemon = d
	inc, err := AttachIncident(d, m.configFile())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	d.shutdown = cancel
	d.reload = m.reload
	start := time.Now()
	if err := d.heal.Reconcile("start"); err != nil {
		return err
	}
	debug.FreeOSMemory()       // the re-assert's netlink buffers are garbage now
	ps, _ := d.path.Stats(ctx) // nothing else holds the path yet
	m.Logger.Info("table ready and store re-asserted", "table", cfg.Table, "blocks", ps.Active, "took", time.Since(start).String())
	if err := m.startFleet(ctx, cfg); err != nil {
		return err
	}
	defer m.stopFleet()
	ps, _ = d.path.Stats(ctx)
	d.Audit("start", map[string]any{"version": Version, "pid": os.Getpid(), "blocks": ps.Active})
	// Follow the host's addresses as they change (the watcher resyncs once
	// it is subscribed), and take the current ones out of stored blocks:
	// an address may have appeared while parryd was down.
	addrsDone := make(chan struct{})
	go func() { defer close(addrsDone); d.heal.FollowAddrs(ctx) }()
	d.path.UnblockOwn()
	incDone := make(chan struct{})
	go func() { inc.Run(ctx); close(incDone) }()
	feedsDone := make(chan struct{})
	go func() { defer close(feedsDone); d.feeds.Run(ctx) }() // agent/feeds.go
	notify(m.Logger, sddaemon.SdNotifyReady)
	m.notifyStatus()
	serveErr := make(chan error, 1)
	go func() { serveErr <- d.server.Serve(ctx, m.ln) }()
	ping := m.watchdog()
	maintained := make(chan struct{})
	go func() {
		defer close(maintained)
		d.maintain(ctx, m.tick(ping))
	}()
	integrityDone := make(chan struct{})
	go func() {
		defer close(integrityDone)
		d.integ.run(ctx) // agent/integrity.go
	}()
	sourcesDone := make(chan struct{})
	go func() {
		defer close(sourcesDone)
		d.runSources(ctx) // agent/sources.go
	}()
	select {
	case <-ctx.Done():
		notify(m.Logger, sddaemon.SdNotifyStopping)
		err = <-serveErr // connections closed, handlers done
	case err = <-serveErr:
		notify(m.Logger, sddaemon.SdNotifyStopping)
	}
	cancel()
	<-maintained
	<-integrityDone
	<-sourcesDone // positions saved
	<-addrsDone
	<-feedsDone
	<-incDone // evidence in flight is written and audited before the log closes
	d.Audit("stop", map[string]any{"pid": os.Getpid()})
	return err
}

// tick is what the maintenance loop runs every second besides its own work:
// the watchdog ping and a STATUS= line every 10 s.
func (m *Main) tick(ping func()) func() {
	now := m.Daemon.now
	lastStatus := now()
	return func() {
		if ping != nil {
			ping()
		}
		if now().Sub(lastStatus) >= 10*time.Second {
			m.notifyStatus()
			lastStatus = now()
		}
	}
}

// defaultLogger logs structured journal entries (PARRY_* fields) when stderr
// is connected to the journal under systemd, and JSON lines to stderr
// otherwise.
func (m *Main) defaultLogger() *slog.Logger {
	if m.Stderr == nil && JournalAvailable() {
		return slog.New(NewJournalHandler(JournalOptions{Fallback: slog.NewJSONHandler(m.out(), nil)}))
	}
	return slog.New(slog.NewJSONHandler(m.out(), nil))
}

// configFile is the config file in use, for the host check; empty when
// running on built-in defaults.
func (m *Main) configFile() string {
	if m.ConfigPath != "" {
		return m.ConfigPath
	}
	if _, err := os.Stat(DefaultConfigPath); err == nil {
		return DefaultConfigPath
	}
	return ""
}

// listener takes the systemd socket named "control" if activated, else
// creates the socket itself.
func (m *Main) listener(cfg Config) (net.Listener, error) {
	named, err := activation.ListenersWithNames()
	if err == nil {
		if ls := named["control"]; len(ls) > 0 && ls[0] != nil {
			m.Logger.Info("control socket from systemd", "name", "control")
			return ls[0], nil
		}
	}
	return control.Listen(cfg.Socket, cfg.Control)
}

func (m *Main) watchdog() func() {
	iv, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || iv == 0 {
		return nil
	}
	now := m.Daemon.now
	last := time.Time{}
	return func() {
		if now().Sub(last) >= iv/3 {
			notify(m.Logger, sddaemon.SdNotifyWatchdog)
			last = now()
		}
	}
}

// statusWait bounds how long the STATUS= line waits for the decision path
// (the maintenance loop sends it, and must go on).
const statusWait = time.Second

func (m *Main) notifyStatus() {
	ctx, cancel := context.WithTimeout(context.Background(), statusWait)
	defer cancel()
	st, err := m.Daemon.Status(ctx)
	if err != nil {
		notify(m.Logger, "STATUS=decision path busy: "+err.Error())
		return
	}
	table := "ok"
	if !st.TableHealth.Present {
		table = "missing"
	}
	lock := "off"
	if st.Lockdown.Active {
		lock = "until " + st.Lockdown.Until.Format(time.RFC3339)
	}
	notify(m.Logger, fmt.Sprintf("STATUS=%d active blocks, lockdown %s, table %s", st.ActiveBlocks, lock, table))
}

func notify(log *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Warn("sd_notify", "state", state, "err", err)
	}
}

// Reload re-reads the config (SIGHUP). An invalid config is refused and the
// old one kept.
func (m *Main) Reload() error {
	if m.Daemon == nil {
		return errors.New("reload: not running")
	}
	_, err := m.reload()
	return err
}

func (m *Main) reload() (api.ReloadResult, error) {
	d := m.Daemon
	notify(m.Logger, sddaemon.SdNotifyReloading)
	defer notify(m.Logger, sddaemon.SdNotifyReady)
	cfg, err := m.LoadConfig()
	if err != nil {
		m.Logger.Error("config reload refused; keeping the old config", "err", err)
		d.Audit("config_reload", map[string]any{"ok": false, "error": err.Error()})
		return api.ReloadResult{}, err
	}
	return d.applyConfig(cfg)
}

// Close releases the daemon, the socket and the netlink connection. The
// nftables table stays.
func (m *Main) Close() error {
	var errs []error
	if m.ln != nil {
		errs = append(errs, ignoreClosed(m.ln.Close()))
	}
	if m.Daemon != nil {
		errs = append(errs, m.Daemon.Close())
	}
	if m.conn != nil {
		errs = append(errs, m.conn.CloseLasting())
	}
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}
