package policy

import (
	"errors"
	"fmt"
)

// Reason says which rule refused a request.
type Reason int

// Reasons a request is refused. Their String form is stable and appears in
// API error messages.
const (
	ReasonBadUser Reason = iota + 1
	ReasonBadDevice
	ReasonDomainNotAllowed
	ReasonBadTTL
	ReasonChallengeMissing
	ReasonChallengeUnknown
	ReasonChallengeExpired
	ReasonChallengeUsed
	ReasonBadCSR
	ReasonWeakKey
	ReasonNameNotBound
	ReasonRenewalNotAuthorized
	ReasonUnknownCertificate
	ReasonAlreadyRevoked
	ReasonBadSerial
	ReasonBadReasonCode
)

var reasonNames = map[Reason]string{
	ReasonBadUser:              "bad-user",
	ReasonBadDevice:            "bad-device",
	ReasonDomainNotAllowed:     "domain-not-allowed",
	ReasonBadTTL:               "bad-ttl",
	ReasonChallengeMissing:     "challenge-missing",
	ReasonChallengeUnknown:     "challenge-unknown",
	ReasonChallengeExpired:     "challenge-expired",
	ReasonChallengeUsed:        "challenge-used",
	ReasonBadCSR:               "bad-csr",
	ReasonWeakKey:              "weak-key",
	ReasonNameNotBound:         "name-not-bound",
	ReasonRenewalNotAuthorized: "renewal-not-authorized",
	ReasonUnknownCertificate:   "unknown-certificate",
	ReasonAlreadyRevoked:       "already-revoked",
	ReasonBadSerial:            "bad-serial",
	ReasonBadReasonCode:        "bad-reason-code",
}

// String returns the stable short name of the reason.
func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("reason(%d)", int(r))
}

// RejectError is returned when a request breaks a rule. Detail says what to
// fix and never holds a secret (no challenge, key or password).
type RejectError struct {
	Reason Reason
	Detail string
}

// Error implements error.
func (e *RejectError) Error() string {
	return "policy: " + e.Reason.String() + ": " + e.Detail
}

func reject(r Reason, detail string) error {
	return &RejectError{Reason: r, Detail: detail}
}

// IsReject reports whether err is a *RejectError and returns it.
func IsReject(err error) (*RejectError, bool) {
	var re *RejectError
	ok := errors.As(err, &re)
	return re, ok
}

// ErrNotFound is returned by stores for a missing record.
var ErrNotFound = errors.New("policy: not found")
