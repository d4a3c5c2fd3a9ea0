package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/parryhq/parry/agent/api"
	"github.com/parryhq/parry/agent/audit"
	"github.com/parryhq/parry/agent/control"
	"github.com/parryhq/parry/agent/enforce"
	"github.com/parryhq/parry/agent/store"
	"github.com/parryhq/parry/response"
)

// Protocol codes of op signal (docs/protocol.md).
const (
	CodeInvalidSignal = "invalid_signal" // a field of the signal is malformed
)

// policy is the signal path: the response engine in force (swapped on
// reload), its escalation memory saved to the store, the signal records
// batched into the audit log, op signal and the daemon's own signals
// (integrity). signals has its own lock; eng is swapped atomically.
type policy struct {
	log           *slog.Logger
	now           func() time.Time
	store         *store.Store
	audit         *audit.Log
	path          *enforce.Path
	refused       func(uid uint32, op string, fields map[string]any) // the control server's aggregated refusals
	observeSignal func(s response.Signal, result string)             // the incident tooling's metrics
	observeSource func(source, detector, result string)              // the log sources' lines (metrics)

	eng     atomic.Pointer[response.Engine]
	signals signalLog // signal records waiting for the audit log
}

// offendersKey is where the policy's escalation memory lives in the
// store's key/value space.
const offendersKey = "response/offenders"

// build builds the policy engine for cfg. It protects the allowlist and
// the host's own addresses, and takes over the escalation memory of old, or
// when old is nil, of the store.
func (sp *policy) build(cfg Config, own []netip.Addr, old *response.Engine) (*response.Engine, error) {
	protect := slices.Clone(cfg.AllowPrefixes())
	for _, a := range own {
		protect = append(protect, netip.PrefixFrom(a, a.BitLen()))
	}
	eng, err := response.New(cfg.Response, response.Options{Now: sp.now, Protect: protect})
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	if old != nil {
		eng.Restore(old.Snapshot())
		return eng, nil
	}
	b, err := sp.store.Get(offendersKey)
	if err != nil {
		return nil, fmt.Errorf("policy: read escalation memory: %w", err)
	}
	if len(b) > 0 {
		var saved []response.Offender
		if err := json.Unmarshal(b, &saved); err != nil {
			sp.log.Warn("policy: escalation memory unreadable; starting empty", "err", err)
		} else {
			sp.log.Info("policy: escalation memory restored", "offenders", eng.Restore(saved))
		}
	}
	return eng, nil
}

// status is the policy's part of op status.
func (sp *policy) status() api.PolicyStatus {
	eng := sp.engine()
	if eng == nil {
		return api.PolicyStatus{}
	}
	st := eng.Stats()
	return api.PolicyStatus{DryRun: eng.Config().DryRun, Rules: len(eng.Rules()), Signals: st.Signals, NoRule: st.NoRule,
		Decisions: st.Decisions, RateLimited: st.RateLimited, Keys: st.Keys, Offenders: st.Offenders, Evicted: st.EvictedKeys,
		SenderBlockCap: sp.path.CapStatus()}
}

// engine returns the policy engine in force.
func (sp *policy) engine() *response.Engine { return sp.eng.Load() }

// offendersSave is how long a change to the escalation memory may wait
// before it is written: blocks are durable at once (the store), the memory
// that lengthens the next block may lag this much, and one write covers
// every block within it instead of an fsync each.
const offendersSave = time.Second

// saveOffenders schedules a write of the escalation memory.
func (sp *policy) saveOffenders() {
	sp.signals.mu.Lock()
	defer sp.signals.mu.Unlock()
	if sp.signals.saveTimer == nil {
		sp.signals.saveTimer = time.AfterFunc(offendersSave, sp.writeOffenders)
	}
}

// flushOffenders writes the escalation memory if a write is pending (on close).
func (sp *policy) flushOffenders() {
	sp.signals.mu.Lock()
	pending := sp.signals.saveTimer != nil
	sp.signals.mu.Unlock()
	if pending {
		sp.writeOffenders()
	}
}

// writeOffenders writes the escalation memory now.
func (sp *policy) writeOffenders() {
	sp.signals.mu.Lock()
	if sp.signals.saveTimer != nil {
		sp.signals.saveTimer.Stop()
		sp.signals.saveTimer = nil
	}
	sp.signals.mu.Unlock()
	b, err := json.Marshal(sp.engine().Snapshot())
	if err == nil {
		err = sp.store.Put(offendersKey, b)
	}
	if err != nil {
		sp.log.Error("policy: saving escalation memory failed", "err", err)
	}
}

// signalParams are the parameters of op "signal".
type signalParams struct {
	Kind     string            `json:"kind"`
	IP       string            `json:"ip"`
	User     string            `json:"user"`
	Source   string            `json:"source"`
	Severity string            `json:"severity"`
	Detail   string            `json:"detail"`
	Path     string            `json:"path"`
	Attrs    map[string]string `json:"attrs"`
}

// SignalResult is the answer to op signal: what the policy made of the
// signal, and for each decision what enforcing it did.
type SignalResult struct {
	Outcome   response.Outcome    `json:"outcome"`
	Progress  []response.Progress `json:"progress,omitempty"`
	Decisions []SignalDecision    `json:"decisions,omitempty"`
}

// AppendFields renders a result without decisions (nearly every signal's)
// without reflection; one with decisions goes through encoding/json.
func (r SignalResult) AppendFields(b []byte) ([]byte, bool) {
	if len(r.Decisions) > 0 {
		return b, false
	}
	b = append(b, `,"outcome":`...)
	b, ok := appendPlainString(b, string(r.Outcome))
	if len(r.Progress) > 0 {
		b = append(b, `,"progress":[`...)
		var ok1, ok2 bool
		for i, p := range r.Progress {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, `{"rule":`...)
			b, ok1 = appendPlainString(b, p.Rule)
			b = append(b, `,"key":`...)
			b, ok2 = appendPlainString(b, p.Key)
			b = append(b, `,"count":`...)
			b = strconv.AppendInt(b, int64(p.Count), 10)
			b = append(b, `,"threshold":`...)
			b = strconv.AppendInt(b, int64(p.Threshold), 10)
			b = append(b, `,"window":`...)
			b = strconv.AppendInt(b, int64(p.Window), 10)
			b = append(b, '}')
			ok = ok && ok1 && ok2
		}
		b = append(b, ']')
	}
	return b, ok
}

// appendPlainString appends s quoted if encoding/json would write it
// as is (printable ASCII, nothing it escapes); false otherwise.
func appendPlainString(b []byte, s string) ([]byte, bool) {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return b, false
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"'), true
}

// SignalDecision is one decision and its enforcement.
type SignalDecision struct {
	response.Decision
	Enforced *enforce.Outcome `json:"enforced,omitempty"` // what Enforce did
	Error    *api.Error       `json:"error,omitempty"`    // why Enforce refused it
}

// peerSender is the policy's view of a control peer.
func peerSender(p control.Peer) response.Sender {
	return response.Sender{UID: p.UID, GID: p.GID, PID: p.PID, User: p.User, Groups: p.Groups}
}

// opSignal: authorise the sender for the kind, rate-limit it, run the
// policy, record the signal, and enforce what the policy decided.
func (sp *policy) opSignal(ctx context.Context, c *control.Call) (any, error) {
	p, err := decodeSignal(c)
	if err != nil {
		return nil, err
	}
	sig := response.Signal{Kind: p.Kind, User: p.User, Source: p.Source, Severity: p.Severity,
		Detail: p.Detail, Path: p.Path, Attrs: p.Attrs, Time: sp.now().UTC(), Sender: peerSender(c.Peer)}
	if p.IP != "" {
		a, err := netip.ParseAddr(p.IP)
		if err != nil {
			return nil, api.Errorf(CodeInvalidSignal, "signal ip: %q is not an IPv4 or IPv6 address", truncate(p.IP, 64))
		}
		sig.IP = a
	}
	if err := response.ValidateSignal(sig); err != nil {
		return nil, api.Errorf(CodeInvalidSignal, "%v", err)
	}
	eng := sp.engine()
	if !c.Peer.Admin {
		if err := eng.Authorize(sig.Sender, sig.Kind); err != nil {
			sp.refused(c.Peer.UID, "signal", map[string]any{"op": "signal", "kind": sig.Kind, "code": api.CodeForbidden, "sender": c.Peer.String()})
			sp.observeSignal(sig, "forbidden")
			return nil, api.Errorf(api.CodeForbidden, "%v", err)
		}
	}
	if err := eng.Admit(sig.Sender); err != nil {
		sp.observeSignal(sig, "rate_limited")
		return nil, api.Errorf(api.CodeRateLimited, "%v; slow down", err)
	}
	if sig.Kind == KindUnbanRequested {
		return sp.unbanRequested(ctx, sig, c.Peer)
	}
	res, err := eng.Handle(sig)
	if err != nil {
		return nil, api.Errorf(CodeInvalidSignal, "%v", err)
	}
	sp.recordSignal(sig, c.Peer, res)
	sp.observeSignal(sig, string(res.Outcome))
	if len(res.Decisions) > 0 {
		sp.flushSignals() // the cause is in the log before the decision
	}
	out := SignalResult{Outcome: res.Outcome, Progress: res.Progress}
	blocked := false
	for _, dec := range res.Decisions {
		requested(&dec, sig, eng.Config(), sp.now())
		sd := SignalDecision{Decision: dec}
		o, err := sp.path.EnforceWith(ctx, dec, enforce.EnforceOptions{SenderCap: !c.Peer.Admin})
		if err != nil {
			var e *api.Error
			if !errors.As(err, &e) {
				e = &api.Error{Code: api.CodeInternal, Message: err.Error()}
			}
			sd.Error = e
		} else {
			sd.Enforced = &o
			sd.ID = o.ID
			blocked = blocked || (dec.Action == response.ActionBlock && !dec.DryRun)
		}
		sd.Cause = nil // the audit log and the store have it; keep the answer short
		out.Decisions = append(out.Decisions, sd)
	}
	if blocked {
		sp.saveOffenders()
	}
	return out, nil
}

// signalRecord is the audit record of one signal (a struct, not a map: it
// is encoded for every signal).
type signalRecord struct {
	Kind     string            `json:"kind"`
	IP       string            `json:"ip,omitempty"`
	User     string            `json:"user,omitempty"`
	Source   string            `json:"source,omitempty"`
	Severity string            `json:"severity,omitempty"`
	Path     string            `json:"path,omitempty"`
	Detail   string            `json:"detail,omitempty"`
	Attrs    map[string]string `json:"attrs,omitempty"`
	Sender   string            `json:"sender"`
	Outcome  string            `json:"outcome"`
	Time     time.Time         `json:"time"`
}

// Signal records are appended to the audit log in batches: one "signals"
// event per signalBatch records or signalFlush, whichever comes first, and
// always before a decision the signals led to. Signals can arrive by the
// ten thousand per second; one hashed, written line each would cost a third
// of the signal path. A crash loses at most signalFlush of signal records,
// never a decision (decisions carry their cause and are written at once).
const (
	signalBatch = 256
	signalFlush = 200 * time.Millisecond
)

// signalLog holds signal records not yet in the audit log.
type signalLog struct {
	mu        sync.Mutex
	pending   []signalRecord
	timer     *time.Timer
	saveTimer *time.Timer // escalation memory write pending
}

// recordSignal queues the audit record of a signal and what became of it.
// It goes to the audit chain only, not the journal; the decisions it leads
// to are journalled.
func (sp *policy) recordSignal(sig response.Signal, peer control.Peer, res response.Result) {
	r := signalRecord{Kind: sig.Kind, User: sig.User, Source: sig.Source, Severity: sig.Severity, Path: sig.Path,
		Detail: sig.Detail, Attrs: sig.Attrs, Sender: peer.String(), Outcome: string(res.Outcome), Time: sig.Time}
	if sig.IP.IsValid() {
		r.IP = sig.IP.String()
	}
	l := &sp.signals
	l.mu.Lock()
	l.pending = append(l.pending, r)
	n := len(l.pending)
	if n == 1 {
		l.timer = time.AfterFunc(signalFlush, sp.flushSignals)
	}
	l.mu.Unlock()
	if n >= signalBatch {
		sp.flushSignals()
	}
}

// flushSignals appends the queued signal records as one audit event.
func (sp *policy) flushSignals() {
	l := &sp.signals
	l.mu.Lock()
	batch := l.pending
	l.pending = nil
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	l.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	fields, err := signalBatchRecord{Count: len(batch), Signals: batch}.MarshalJSON()
	if err == nil {
		err = sp.audit.Append("signals", audit.Raw(fields))
	}
	if err != nil {
		sp.log.Error("audit append failed", "event", "signals", "count", len(batch), "err", err)
	}
}

// signalBatchRecord is the audit event "signals".
type signalBatchRecord struct {
	Count   int            `json:"count"`
	Signals []signalRecord `json:"signals"`
}

// MarshalJSON renders the batch as encoding/json would (tested), without
// reflection: it is encoded for every signalBatch signals.
func (r signalBatchRecord) MarshalJSON() ([]byte, error) {
	b := make([]byte, 0, 64+192*len(r.Signals))
	b = append(b, `{"count":`...)
	b = strconv.AppendInt(b, int64(r.Count), 10)
	b = append(b, `,"signals":`...)
	if r.Signals == nil {
		return append(b, "null}"...), nil
	}
	b = append(b, '[')
	for i := range r.Signals {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = r.Signals[i].appendJSON(b); err != nil {
			return nil, err
		}
	}
	return append(b, "]}"...), nil
}

func (r *signalRecord) appendJSON(b []byte) ([]byte, error) {
	b = append(b, `{"kind":`...)
	b = appendJSONString(b, r.Kind)
	for _, f := range [...]struct{ name, v string }{{`,"ip":`, r.IP}, {`,"user":`, r.User}, {`,"source":`, r.Source},
		{`,"severity":`, r.Severity}, {`,"path":`, r.Path}, {`,"detail":`, r.Detail}} {
		if f.v != "" {
			b = appendJSONString(append(b, f.name...), f.v)
		}
	}
	if len(r.Attrs) > 0 {
		a, err := json.Marshal(r.Attrs)
		if err != nil {
			return nil, err
		}
		b = append(append(b, `,"attrs":`...), a...)
	}
	b = appendJSONString(append(b, `,"sender":`...), r.Sender)
	b = appendJSONString(append(b, `,"outcome":`...), r.Outcome)
	b = append(b, `,"time":`...)
	t, err := r.Time.MarshalJSON()
	if err != nil {
		return nil, err
	}
	return append(append(b, t...), '}'), nil
}

// appendJSONString appends s as encoding/json writes a string.
func appendJSONString(b []byte, s string) []byte {
	if b2, ok := appendPlainString(b, s); ok {
		return b2
	}
	q, _ := json.Marshal(s) // a string always encodes
	return append(b, q...)
}

// decodeSignal reads the parameters of op signal straight from the
// request's fields (Call.Decode re-encodes them first: too slow for the
// rate signals come at), as strictly: unknown fields and wrong types are
// bad_request.
func decodeSignal(c *control.Call) (signalParams, error) {
	var p signalParams
	for key, raw := range c.Params() {
		var dst *string
		switch string(key) {
		case "kind":
			dst = &p.Kind
		case "ip":
			dst = &p.IP
		case "user":
			dst = &p.User
		case "source":
			dst = &p.Source
		case "severity":
			dst = &p.Severity
		case "detail":
			dst = &p.Detail
		case "path":
			dst = &p.Path
		case "attrs":
			p.Attrs = nil // a repeated member counts as its last occurrence
			if err := json.Unmarshal(raw, &p.Attrs); err != nil {
				return p, api.Errorf(api.CodeBadRequest, `op signal: "attrs" must be an object of strings`)
			}
			continue
		default:
			return p, api.Errorf(api.CodeBadRequest, "op signal: unknown field %q", truncate(string(key), 64))
		}
		k := key
		if len(raw) < 2 || raw[0] != '"' {
			return p, api.Errorf(api.CodeBadRequest, "op signal: %q must be a string", k)
		}
		if control.PlainString(raw[1 : len(raw)-1]) { // the request line was already checked as JSON
			*dst = string(raw[1 : len(raw)-1])
		} else if err := json.Unmarshal(raw, dst); err != nil {
			return p, api.Errorf(api.CodeBadRequest, "op signal: %q must be a string", k)
		}
	}
	return p, nil
}

// integritySender is how the integrity watcher appears as a signal sender
// and in the audit log.
func integritySender() control.Peer {
	return control.Peer{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), User: "parryd-integrity", Admin: true}
}

// handleOwn runs one integrity_violation signal through the
// response policy (which may notify, log, block or lock down, as its rules
// for kind integrity_violation say) and enforces what it decides, exactly
// as op signal does for signals from the socket.
func (sp *policy) handleOwn(ctx context.Context, sig response.Signal) {
	eng := sp.engine()
	if eng == nil {
		sp.log.Warn("integrity_violation signal dropped: no policy engine", "path", sig.Path)
		return
	}
	peer := integritySender()
	sig.Sender = peerSender(peer)
	if sig.Time.IsZero() {
		sig.Time = sp.now().UTC()
	}
	if err := response.ValidateSignal(sig); err != nil {
		sp.log.Error("integrity_violation signal invalid", "path", sig.Path, "err", err)
		return
	}
	res, err := eng.Handle(sig)
	if err != nil {
		sp.log.Error("policy refused an integrity_violation signal", "path", sig.Path, "err", err)
		return
	}
	sp.recordSignal(sig, peer, res)
	sp.observeSignal(sig, string(res.Outcome))
	blocked := false
	for _, dec := range res.Decisions {
		if _, err := sp.path.Enforce(ctx, dec); err != nil {
			sp.log.Error("enforcing the policy's answer to an integrity finding failed", "action", dec.Action, "path", sig.Path, "err", err)
			continue
		}
		blocked = blocked || (dec.Action == response.ActionBlock && !dec.DryRun)
	}
	if blocked {
		sp.saveOffenders()
	}
}

// senderCap is response.sender_block_cap of the policy in force.
func (sp *policy) senderCap() response.BlockCap {
	if eng := sp.engine(); eng != nil {
		return eng.Config().SenderBlockCap
	}
	return response.BlockCap{}
}
