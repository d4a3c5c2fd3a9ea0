package api

import (
	"errors"
	"fmt"
)

// Stable error codes of the control protocol (docs/protocol.md). Clients
// branch on these; never change the meaning of one.
const (
	CodeBadRequest      = "bad_request"   // not JSON, wrong field types, unknown fields
	CodeLineTooLong     = "line_too_long" // request line over control.max_line_bytes
	CodeUnknownOp       = "unknown_op"    // no such op
	CodeForbidden       = "forbidden"     // the peer may not use this op
	CodeRateLimited     = "rate_limited"  // too many requests from this peer
	CodeTooManyConns    = "too_many_connections"
	CodeInvalidTarget   = "invalid_target"   // not an IP or CIDR
	CodeInvalidDuration = "invalid_duration" // bad "for"
	CodeLoopback        = "loopback"         // guard: loopback
	CodeLinkLocal       = "link_local"       // guard: link-local
	CodeMulticast       = "multicast"        // guard: multicast or broadcast
	CodeUnspecified     = "unspecified"      // guard: 0.0.0.0/8, ::
	CodeTooBroad        = "too_broad"        // guard: broader than min_prefix_v4/v6, or /0
	CodeAllowlisted     = "allowlisted"      // guard: overlaps the allowlist
	CodeOwnAddress      = "own_address"      // guard: one of the host's addresses
	CodeOverlap         = "overlap"          // no longer returned (blocks may overlap: the kernel holds their union); reserved
	CodeRefused         = "refused"          // several targets refused (see "refused")
	CodeStore           = "store_failed"     // could not commit to the store; nothing changed
	CodeFirewall        = "firewall_failed"  // the kernel refused; nothing changed
	CodeAudit           = "audit"            // the audit log could not be written (full disk, I/O error); nothing changed
	CodeShuttingDown    = "shutting_down"    // the daemon is stopping
	CodeBusy            = "busy"             // the part the op needs did not become free within its bounded wait; nothing changed, try again
	CodeInternal        = "internal"         // a bug; see the daemon's log
)

// Error is an error with a stable protocol code.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Target  string `json:"target,omitempty"` // the target it is about, if any
}

func (e *Error) Error() string { return e.Message }

// Errorf returns an *Error with code and a formatted message.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// CodeOf returns the protocol code of err (CodeInternal when it has none).
func CodeOf(err error) string {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeInternal
}
