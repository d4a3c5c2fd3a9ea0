package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/response"
)

// Event is one thing to tell people about.
type Event struct {
	Kind     string             `json:"kind"` // decision, lockdown, finding
	Time     time.Time          `json:"time"`
	Host     string             `json:"host,omitempty"`
	Severity string             `json:"severity,omitempty"`
	Title    string             `json:"title"` // one line, for chat
	Decision *response.Decision `json:"decision,omitempty"`
	Finding  *response.Signal   `json:"finding,omitempty"`
}

// Results reported to Options.Observe.
const (
	ResultDelivered = "delivered"
	ResultRetry     = "retry"   // one attempt failed; another follows
	ResultFailed    = "failed"  // gave up after the retries, or a permanent 4xx
	ResultDropped   = "dropped" // queue full
)

// Options are the injected dependencies.
type Options struct {
	Logger *slog.Logger
	Client *http.Client // default: a client with no overall timeout (Config.Timeout bounds each attempt)
	Now    func() time.Time
	Host   string // this host's name, put in every event
	// Observe, if set, is called for each delivery outcome (metrics). It
	// must not block.
	Observe func(webhook, result string)
}

// Stats are one webhook's counters.
type Stats struct {
	Name      string `json:"name"`
	Target    string `json:"target"` // redacted URL
	Queued    int    `json:"queued"`
	Delivered uint64 `json:"delivered"`
	Retries   uint64 `json:"retries"`
	Failed    uint64 `json:"failed"`
	Dropped   uint64 `json:"dropped"`
}

type hook struct {
	name                                string
	conf                                atomic.Pointer[hookConf] // swapped by Update
	queue                               chan Event
	stop                                chan struct{} // closed when Update removes the webhook
	delivered, retries, failed, dropped atomic.Uint64
}

// hookConf is what Update may change of a webhook in place.
type hookConf struct {
	Webhook
	target string // redacted, for logs
}

// state is the notifier's configuration in force; Update swaps it whole.
type state struct {
	cfg   Config
	hooks []*hook
}

// Notifier fans events out to the configured webhooks.
type Notifier struct {
	opts    Options
	mu      sync.Mutex // serializes Update
	st      atomic.Pointer[state]
	changed chan struct{} // cap 1: Update added webhooks for Run to start
}

// New builds a notifier; nothing is sent until Run.
func New(cfg Config, opts Options) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	n := &Notifier{opts: opts, changed: make(chan struct{}, 1)}
	n.st.Store(n.build(cfg.WithDefaults(), nil))
	return n, nil
}

// build makes the state for cfg, keeping the hooks of old whose name is
// still configured (with their queue, counters and worker).
func (n *Notifier) build(cfg Config, old *state) *state {
	st := &state{cfg: cfg}
	for i, w := range cfg.Webhooks {
		name := w.name(i)
		var h *hook
		if old != nil {
			for _, o := range old.hooks {
				if o.name == name {
					h = o
				}
			}
		}
		if h == nil {
			h = &hook{name: name, queue: make(chan Event, cfg.QueueSize), stop: make(chan struct{})}
		}
		h.conf.Store(&hookConf{Webhook: w, target: Redact(w.URL)})
		st.hooks = append(st.hooks, h)
	}
	return st
}

// Update switches to cfg (a config reload) without losing queued events:
// a webhook that keeps its name keeps its queue, its counters and its
// worker, and sends what it has queued and everything after with its new
// URL, headers and format; a new one starts; a removed one stops, and the
// events still in its queue are dropped (counted, and logged). Events,
// severities, retries, backoff and timeout apply to the next delivery
// attempt. queue_size applies to new webhooks only.
func (n *Notifier) Update(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	old := n.st.Load()
	st := n.build(cfg.WithDefaults(), old)
	n.st.Store(st)
	for _, o := range old.hooks {
		if !slices.Contains(st.hooks, o) {
			close(o.stop)
			if q := len(o.queue); q > 0 {
				o.dropped.Add(uint64(q))
				n.opts.Logger.Warn("notify: webhook removed by a reload; its queued events are dropped", "webhook", o.name, "dropped", q)
			}
		}
	}
	select {
	case n.changed <- struct{}{}:
	default:
	}
	return nil
}

// Enabled reports whether any webhook is configured.
func (n *Notifier) Enabled() bool { return len(n.st.Load().hooks) > 0 }

// Wants reports whether an event of this kind and severity would be sent.
func (n *Notifier) Wants(kind, severity string) bool { return n.st.Load().wants(kind, severity) }

func (st *state) wants(kind, severity string) bool {
	if len(st.hooks) == 0 || !slices.Contains(st.cfg.Events, kind) {
		return false
	}
	return kind != KindFinding || SeverityRank(severity) >= SeverityRank(st.cfg.MinSeverity)
}

// Notify queues the event for every webhook without ever blocking; a full
// queue drops it for that webhook (counted). It reports whether every
// webhook accepted it.
func (n *Notifier) Notify(ev Event) bool {
	st := n.st.Load()
	if !st.wants(ev.Kind, ev.Severity) {
		return true
	}
	if ev.Time.IsZero() {
		ev.Time = n.opts.Now()
	}
	if ev.Host == "" {
		ev.Host = n.opts.Host
	}
	all := true
	for _, h := range st.hooks {
		select {
		case h.queue <- ev:
		default:
			all = false
			h.dropped.Add(1)
			n.observe(h, ResultDropped)
		}
	}
	return all
}

func (n *Notifier) observe(h *hook, result string) {
	if n.opts.Observe != nil {
		n.opts.Observe(h.name, result)
	}
}

// Stats returns the counters of each webhook.
func (n *Notifier) Stats() []Stats {
	hooks := n.st.Load().hooks
	out := make([]Stats, 0, len(hooks))
	for _, h := range hooks {
		out = append(out, Stats{Name: h.name, Target: h.conf.Load().target, Queued: len(h.queue),
			Delivered: h.delivered.Load(), Retries: h.retries.Load(), Failed: h.failed.Load(), Dropped: h.dropped.Load()})
	}
	return out
}

// Run delivers until ctx ends, one worker per webhook (started as Update
// adds webhooks, stopped as it removes them). Events still queued then are
// abandoned.
func (n *Notifier) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	started := map[*hook]bool{}
	for {
		for _, h := range n.st.Load().hooks {
			if started[h] {
				continue
			}
			started[h] = true
			wg.Go(func() {
				for {
					select {
					case <-ctx.Done():
						return
					case <-h.stop:
						return
					case ev := <-h.queue:
						n.deliver(ctx, h, ev)
					}
				}
			})
		}
		select {
		case <-ctx.Done():
			return
		case <-n.changed:
		}
	}
}

// deliver tries once and then Retries more times with doubling backoff.
func (n *Notifier) deliver(ctx context.Context, h *hook, ev Event) {
	body, err := n.body(h, ev)
	if err != nil {
		h.failed.Add(1)
		n.observe(h, ResultFailed)
		n.opts.Logger.Error("notify: encode", "webhook", h.name, "err", err)
		return
	}
	cfg := n.st.Load().cfg
	wait := cfg.Backoff.D()
	for attempt := 0; ; attempt++ {
		err := n.post(ctx, h, body)
		if err == nil {
			h.delivered.Add(1)
			n.observe(h, ResultDelivered)
			return
		}
		var perm *permanentError
		if attempt >= cfg.Retries || errors.As(err, &perm) || ctx.Err() != nil {
			h.failed.Add(1)
			n.observe(h, ResultFailed)
			n.opts.Logger.Warn("notify: giving up", "webhook", h.name, "target", h.conf.Load().target,
				"kind", ev.Kind, "attempts", attempt+1, "err", err)
			return
		}
		h.retries.Add(1)
		n.observe(h, ResultRetry)
		n.opts.Logger.Info("notify: retrying", "webhook", h.name, "target", h.conf.Load().target, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			h.failed.Add(1)
			n.observe(h, ResultFailed)
			return
		case <-t.C:
		}
		wait = min(2*wait, cfg.MaxBackoff.D())
	}
}

type permanentError struct{ status int }

func (e *permanentError) Error() string { return fmt.Sprintf("HTTP %d (not retried)", e.status) }

// post sends one attempt. Errors never contain the URL (see redactErr).
func (n *Notifier) post(ctx context.Context, h *hook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.st.Load().cfg.Timeout.D())
	defer cancel()
	hc := h.conf.Load() // the URL in force now: a retry after a reload goes to the new one
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, hc.URL, bytes.NewReader(body))
	if err != nil {
		return redactErr(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "parry")
	for k, v := range hc.Headers {
		req.Header.Set(k, v)
	}
	resp, err := n.opts.Client.Do(req)
	if err != nil {
		return redactErr(err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode >= 200 && resp.StatusCode < 300:
		return nil
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500:
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	default:
		return &permanentError{status: resp.StatusCode}
	}
}

// redactErr strips the URL out of net/http's errors, keeping the cause.
func redactErr(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s <webhook url>: %w", ue.Op, ue.Err)
	}
	return errors.New("invalid request")
}

func (n *Notifier) body(h *hook, ev Event) ([]byte, error) {
	if h.conf.Load().Format == "slack" {
		return json.Marshal(map[string]string{"text": slackText(ev)})
	}
	return json.Marshal(ev)
}

// slackEscape escapes the three characters Slack treats as markup, so text
// from a signal (a reason, a path) cannot ping <!channel> or forge links.
var slackEscape = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;")

func slackText(ev Event) string {
	sev := ""
	if ev.Severity != "" {
		sev = " [" + ev.Severity + "]"
	}
	return slackEscape.Replace(fmt.Sprintf("*parry@%s*%s %s: %s", ev.Host, sev, ev.Kind, ev.Title))
}
