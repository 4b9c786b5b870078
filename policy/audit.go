package policy

import (
	"context"
	"time"
)

// Actor is who asked for an action: an API caller (role and certificate
// name) or a device over SCEP.
type Actor struct {
	Role string `json:"role"`
	// Name is the credential's name (the API caller's identity) or, for a
	// device, what identifies it.
	Name string `json:"name"`
	// Credential is the serial (hex) of the API credential that called.
	Credential string `json:"credential,omitempty"`
}

type actorKey struct{}

// WithActor returns ctx carrying the actor on whose behalf policy acts.
func WithActor(ctx context.Context, a Actor) context.Context {
	return context.WithValue(ctx, actorKey{}, a)
}

// ActorFrom returns the actor carried by ctx, or the zero Actor.
func ActorFrom(ctx context.Context) Actor {
	a, _ := ctx.Value(actorKey{}).(Actor)
	return a
}

// Event is one audit record. It never holds a secret: no challenge, key or
// password, only identifiers and thumbprints.
type Event struct {
	Time    time.Time `json:"time"`
	Actor   Actor     `json:"actor"`
	Action  string    `json:"action"`
	User    string    `json:"user,omitempty"`
	Device  string    `json:"device,omitempty"`
	Serials []string  `json:"serials,omitempty"`
	SHA256  []string  `json:"sha256,omitempty"`
	// Recipient is the SHA-256 of the certificate released keys were
	// encrypted to ("" for an administrator's plain break-glass release).
	Recipient string `json:"recipient_sha256,omitempty"`
	Result    string `json:"result"`
	Detail    string `json:"detail,omitempty"`
	// EscrowNotice records that a key release told the subscriber that
	// the released keys are escrowed (KeyEscrowNotice).
	EscrowNotice bool `json:"escrow_notice_given,omitempty"`
}

// Audit actions.
const (
	ActionChallengeCreate = "challenge.create"
	ActionEnroll          = "certificate.enroll"
	ActionRenew           = "certificate.renew"
	ActionRevoke          = "certificate.revoke"
	ActionRevokeDevice    = "device.revoke"
	// ActionAssetsRender: a device's Declarative Device Management
	// declarations were rendered (hashes of its assets; nothing released).
	ActionAssetsRender = "ddm.render"
	// ActionAssetRefused: a device asset was refused to the TLS client
	// that asked for it.
	ActionAssetRefused = "ddm.asset"
)

// Auditor records audit events. Implementations must not block for long and
// must not fail the action; they report their own trouble.
type Auditor interface {
	Audit(ctx context.Context, e Event)
}

// Recorder is an Auditor that reports whether an event was durably
// recorded. A key is released only after its event was recorded: no audit,
// no release.
type Recorder interface {
	Auditor
	Record(ctx context.Context, e Event) error
}

// Auditors sends each event to every auditor in turn.
type Auditors []Auditor

// Audit implements Auditor.
func (as Auditors) Audit(ctx context.Context, e Event) {
	for _, a := range as {
		a.Audit(ctx, e)
	}
}

// Record implements Recorder: every Recorder among them must record the
// event (the others are told as by Audit); the first failure is returned.
func (as Auditors) Record(ctx context.Context, e Event) error {
	var first error
	for _, a := range as {
		if r, ok := a.(Recorder); ok {
			if err := r.Record(ctx, e); err != nil && first == nil {
				first = err
			}
			continue
		}
		a.Audit(ctx, e)
	}
	return first
}
