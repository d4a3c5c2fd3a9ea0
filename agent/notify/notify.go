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
	Webhook
	name                                string
	target                              string // redacted, for logs
	queue                               chan Event
	delivered, retries, failed, dropped atomic.Uint64
}

// Notifier fans events out to the configured webhooks.
type Notifier struct {
	cfg   Config
	opts  Options
	hooks []*hook
}

// New builds a notifier; nothing is sent until Run.
func New(cfg Config, opts Options) (*Notifier, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	n := &Notifier{cfg: cfg, opts: opts}
	for i, w := range cfg.Webhooks {
		n.hooks = append(n.hooks, &hook{Webhook: w, name: w.name(i), target: Redact(w.URL),
			queue: make(chan Event, cfg.QueueSize)})
	}
	return n, nil
}

// Enabled reports whether any webhook is configured.
func (n *Notifier) Enabled() bool { return len(n.hooks) > 0 }

// Wants reports whether an event of this kind and severity would be sent.
func (n *Notifier) Wants(kind, severity string) bool {
	if !n.Enabled() || !slices.Contains(n.cfg.Events, kind) {
		return false
	}
	return kind != KindFinding || SeverityRank(severity) >= SeverityRank(n.cfg.MinSeverity)
}

// Notify queues the event for every webhook without ever blocking; a full
// queue drops it for that webhook (counted). It reports whether every
// webhook accepted it.
func (n *Notifier) Notify(ev Event) bool {
	if !n.Wants(ev.Kind, ev.Severity) {
		return true
	}
	if ev.Time.IsZero() {
		ev.Time = n.opts.Now()
	}
	if ev.Host == "" {
		ev.Host = n.opts.Host
	}
	all := true
	for _, h := range n.hooks {
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
	out := make([]Stats, 0, len(n.hooks))
	for _, h := range n.hooks {
		out = append(out, Stats{Name: h.name, Target: h.target, Queued: len(h.queue),
			Delivered: h.delivered.Load(), Retries: h.retries.Load(), Failed: h.failed.Load(), Dropped: h.dropped.Load()})
	}
	return out
}

// Run delivers until ctx ends, one worker per webhook. Events still queued
// then are abandoned.
func (n *Notifier) Run(ctx context.Context) {
	done := make(chan struct{})
	for _, h := range n.hooks {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case <-ctx.Done():
					return
				case ev := <-h.queue:
					n.deliver(ctx, h, ev)
				}
			}
		}()
	}
	for range n.hooks {
		<-done
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
	wait := n.cfg.Backoff.D()
	for attempt := 0; ; attempt++ {
		err := n.post(ctx, h, body)
		if err == nil {
			h.delivered.Add(1)
			n.observe(h, ResultDelivered)
			return
		}
		var perm *permanentError
		if attempt >= n.cfg.Retries || errors.As(err, &perm) || ctx.Err() != nil {
			h.failed.Add(1)
			n.observe(h, ResultFailed)
			n.opts.Logger.Warn("notify: giving up", "webhook", h.name, "target", h.target,
				"kind", ev.Kind, "attempts", attempt+1, "err", err)
			return
		}
		h.retries.Add(1)
		n.observe(h, ResultRetry)
		n.opts.Logger.Info("notify: retrying", "webhook", h.name, "target", h.target, "in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			h.failed.Add(1)
			n.observe(h, ResultFailed)
			return
		case <-t.C:
		}
		wait = min(2*wait, n.cfg.MaxBackoff.D())
	}
}

type permanentError struct{ status int }

func (e *permanentError) Error() string { return fmt.Sprintf("HTTP %d (not retried)", e.status) }

// post sends one attempt. Errors never contain the URL (see redactErr).
func (n *Notifier) post(ctx context.Context, h *hook, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, n.cfg.Timeout.D())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.URL, bytes.NewReader(body))
	if err != nil {
		return redactErr(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "parry")
	for k, v := range h.Headers {
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
	if h.Format == "slack" {
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
