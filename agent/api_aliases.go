package agent

import "github.com/parryhq/parry/agent/api"

// Names moved to agent/api, the control protocol's leaf package, kept here
// so that branches written against the old names merge cleanly. The
// architecture split (issue 11) removes this file: use api.X directly in
// new code.

type (
	Status         = api.Status
	BlockInfo      = api.BlockInfo
	Health         = api.Health
	LockdownState  = api.LockdownState
	ChainBreak     = api.ChainBreak
	PolicyStatus   = api.PolicyStatus
	AuditFailure   = api.AuditFailure
	BlockCapStatus = api.BlockCapStatus
	EvidenceInfo   = api.EvidenceInfo
	Error          = api.Error
	Duration       = api.Duration
)

const (
	CodeBadRequest      = api.CodeBadRequest
	CodeLineTooLong     = api.CodeLineTooLong
	CodeUnknownOp       = api.CodeUnknownOp
	CodeForbidden       = api.CodeForbidden
	CodeRateLimited     = api.CodeRateLimited
	CodeTooManyConns    = api.CodeTooManyConns
	CodeInvalidTarget   = api.CodeInvalidTarget
	CodeInvalidDuration = api.CodeInvalidDuration
	CodeLoopback        = api.CodeLoopback
	CodeLinkLocal       = api.CodeLinkLocal
	CodeMulticast       = api.CodeMulticast
	CodeUnspecified     = api.CodeUnspecified
	CodeTooBroad        = api.CodeTooBroad
	CodeAllowlisted     = api.CodeAllowlisted
	CodeOwnAddress      = api.CodeOwnAddress
	CodeOverlap         = api.CodeOverlap
	CodeRefused         = api.CodeRefused
	CodeStore           = api.CodeStore
	CodeAudit           = api.CodeAudit
	CodeFirewall        = api.CodeFirewall
	CodeShuttingDown    = api.CodeShuttingDown
	CodeInternal        = api.CodeInternal
)

var (
	CodeOf         = api.CodeOf
	ParseTarget    = api.ParseTarget
	FormatTarget   = api.FormatTarget
	ParseDuration  = api.ParseDuration
	FormatDuration = api.FormatDuration
)

// errorf is api.Errorf, the daemon's short name for it.
func errorf(code, format string, args ...any) *Error { return api.Errorf(code, format, args...) }
