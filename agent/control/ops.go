// Package control is parryd's control server: the Unix socket, peer
// credentials and rights, connection and rate limits, request decoding,
// and the op table. The parts of the daemon register their ops
// (Handle, HandleParams) before Serve; the server never takes a part's
// lock, it only calls the handlers (docs/protocol.md).
package control

import (
	"context"
	"log/slog"
	"slices"
	"time"
)

// Perm decides whether a peer may use an op.
type Perm func(p Peer) bool

// PermAnyone lets every peer that can open the socket use the op.
func PermAnyone(Peer) bool { return true }

// PermAdmin allows root and members of control.admin_groups.
func PermAdmin(p Peer) bool { return p.Admin }

// Handler runs one op. Its result is marshalled as a JSON object whose
// fields join "ok" and "id" at the top level of the response; an error with
// a code (*api.Error) becomes {"ok":false,"error":{...}}.
type Handler func(ctx context.Context, c *Call) (any, error)

type op struct {
	perm   Perm
	fn     Handler
	params bool // false: any member besides "op" and "id" is bad_request, refused before fn runs
}

// Options are a Server's dependencies.
type Options struct {
	Log *slog.Logger // default slog.Default()
	// Config is the control section in force: read once by Serve for the
	// connection limits, and per connection for the rest.
	Config func() Config
	Now    func() time.Time // default time.Now
	// Audit appends an audit event (refusals, aggregated).
	Audit func(event string, fields map[string]any) error
}

// Server is the control server. Its op table is written before Serve and
// only read after; the limiter, the connection slots and the refusal
// counter each own their lock.
type Server struct {
	log      *slog.Logger
	config   func() Config
	ops      map[string]op
	limiter  *peerLimiter
	refusals *refusals
}

// NewServer returns a server with an empty op table.
func NewServer(o Options) *Server {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	cfg := o.Config()
	s := &Server{log: o.Log, config: o.Config, ops: map[string]op{}, limiter: newPeerLimiter(cfg.Rate, cfg.Burst)}
	s.refusals = newRefusals(refuseInterval, o.Now, func(f map[string]any) { o.Audit("refuse", f) })
	return s
}

// Handle registers an op that takes no parameters: the server refuses a
// request for it that carries any member besides "op" and "id"
// (bad_request) before the handler runs.
func (s *Server) Handle(name string, perm Perm, fn Handler) {
	s.register(name, op{perm: perm, fn: fn})
}

// HandleParams registers an op that takes parameters; its handler must
// decode them with Call.Decode (strict: unknown fields are bad_request)
// before it changes anything.
func (s *Server) HandleParams(name string, perm Perm, fn Handler) {
	s.register(name, op{perm: perm, fn: fn, params: true})
}

func (s *Server) register(name string, e op) {
	if _, dup := s.ops[name]; dup {
		panic("control: op registered twice: " + name)
	}
	s.ops[name] = e
}

// Ops lists the registered ops, sorted.
func (s *Server) Ops() []string {
	out := make([]string, 0, len(s.ops))
	for name := range s.ops {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

// Limit changes the per-peer request rate (reload).
func (s *Server) Limit(rate float64, burst int) { s.limiter.reset(rate, burst) }

// Refused records a refusal for uid's op in the audit log, aggregated:
// the first of an interval at once, then one summary line (refuse.go).
func (s *Server) Refused(uid uint32, op string, fields map[string]any) {
	s.refusals.note(uid, op, fields)
}

// Close writes the pending refusal summaries; later refusals are
// recorded one by one.
func (s *Server) Close() { s.refusals.close() }
