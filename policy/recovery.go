package policy

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Recovery audit actions: each step of a recovery request.
const (
	ActionRecoveryRequest = "recovery.request"
	ActionRecoveryApprove = "recovery.approve"
	ActionRecoveryReject  = "recovery.reject"
	ActionRecoveryExpire  = "recovery.expire"
	// ActionKeyRecovery is the one-time download of an approved request:
	// a key release to the certificate the request named.
	ActionKeyRecovery = "key.release.recovery"
)

// Recovery request states.
const (
	RecoveryPending  = "pending"
	RecoveryApproved = "approved"
	RecoveryRejected = "rejected"
	RecoveryExpired  = "expired"
	RecoveryReleased = "released"
)

// RecoveryRequest is a recovery request as stored: who asked for which of a
// user's escrowed keys, encrypted to which certificate, and the votes.
type RecoveryRequest struct {
	ID          string   `json:"id"`
	User        string   `json:"user"`
	Thumbprints []string `json:"thumbprints,omitempty"` // SHA-256 hex; empty: all
	Reason      string   `json:"reason"`
	Requester   Actor    `json:"requester"`
	// RecipientDER is the certificate the release is encrypted to.
	RecipientDER []byte         `json:"recipient_der"`
	CreatedAt    time.Time      `json:"created_at"`
	Deadline     time.Time      `json:"deadline"`
	Quorum       int            `json:"quorum"`
	Votes        []RecoveryVote `json:"votes,omitempty"`
	State        string         `json:"state"`
	ReleasedAt   time.Time      `json:"released_at,omitzero"`
}

// RecipientSHA256 returns the SHA-256 (hex) of the recipient certificate.
func (r RecoveryRequest) RecipientSHA256() string {
	sum := sha256.Sum256(r.RecipientDER)
	return hex.EncodeToString(sum[:])
}

// RecoveryVote is one approver's vote.
type RecoveryVote struct {
	Approver Actor     `json:"approver"`
	Approve  bool      `json:"approve"`
	Comment  string    `json:"comment,omitempty"`
	At       time.Time `json:"at"`
}

// RecoveryStore keeps recovery requests. Every change goes through
// UpdateRecovery, atomically per request across every node sharing the
// store: two votes or two downloads racing are applied one after the
// other, each seeing the other's result.
type RecoveryStore interface {
	// CreateRecovery stores a new request.
	CreateRecovery(ctx context.Context, r RecoveryRequest) error
	// Recovery returns the request with id, or ErrNotFound.
	Recovery(ctx context.Context, id string) (RecoveryRequest, error)
	// UpdateRecovery applies change to the request with id and stores the
	// result, unless change fails (its error is returned, nothing stored).
	// It returns the stored request.
	UpdateRecovery(ctx context.Context, id string, change func(*RecoveryRequest) error) (RecoveryRequest, error)
	// ListRecoveries returns every request (of user, when not empty).
	ListRecoveries(ctx context.Context, user string) ([]RecoveryRequest, error)
}

// RecoveryConfig sets the quorum and the deadline.
type RecoveryConfig struct {
	// Quorum is how many distinct approvers must agree (default 2).
	Quorum int
	// Deadline is how long a request waits for its quorum and its
	// download (default 72 h).
	Deadline time.Duration
	// Notify, when set, learns of every step (request, vote, expiry,
	// release) without any secret, so that the user can be told (S/MIME BR
	// 4.12.1). Its failure is logged by its owner, never blocks the step.
	Notify func(ctx context.Context, e Event)
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// RecoveryKeys is what recovery needs of the escrow: the user's certificates
// (metadata, nothing decrypted) when a request is filed, their keys when it
// is downloaded.
type RecoveryKeys interface {
	List(ctx context.Context, user string) ([]Escrowed, error)
	KeyStore
}

// Recoveries runs recovery requests: dual control over releasing a user's
// escrowed keys to a person.
type Recoveries struct {
	store RecoveryStore
	keys  RecoveryKeys
	audit Recorder
	cfg   RecoveryConfig
	now   func() time.Time
}

// NewRecoveries returns the recovery rules over store, the escrow keys and
// the audit trail (every step is recorded before it is answered).
func NewRecoveries(store RecoveryStore, keys RecoveryKeys, audit Recorder, cfg RecoveryConfig) *Recoveries {
	if cfg.Quorum <= 0 {
		cfg.Quorum = 2
	}
	if cfg.Deadline <= 0 {
		cfg.Deadline = 72 * time.Hour
	}
	if audit == nil {
		audit = nopAuditor{}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Recoveries{store: store, keys: keys, audit: audit, cfg: cfg, now: cfg.Now}
}

// Quorum returns the number of approvals a request needs.
func (r *Recoveries) Quorum() int { return r.cfg.Quorum }

// maxRecoveryRecipient bounds the recipient certificate's DER.
const maxRecoveryRecipient = 16 << 10

// Request files a pending request by the caller (an officer) for user's
// escrowed keys (those with thumbprints, or all), to be encrypted to
// recipientDER, which must be an RSA certificate that may encrypt keys.
// The user must have them in escrow now.
func (r *Recoveries) Request(ctx context.Context, user string, thumbprints []string, reason string, recipientDER []byte) (RecoveryRequest, error) {
	user, err := NormalizeEmail(user)
	if err != nil {
		return RecoveryRequest{}, err
	}
	if strings.TrimSpace(reason) == "" {
		return RecoveryRequest{}, reject(ReasonBadText, "a recovery request needs a reason (--reason): approvers judge it")
	}
	if err := CheckText("the reason", reason); err != nil {
		return RecoveryRequest{}, err
	}
	if len(recipientDER) == 0 || len(recipientDER) > maxRecoveryRecipient {
		return RecoveryRequest{}, reject(ReasonBadRecipient, "the recipient certificate (the officer's own encryption certificate, DER) is missing or larger than 16 KiB")
	}
	recipient, err := x509.ParseCertificate(recipientDER)
	if err != nil {
		return RecoveryRequest{}, reject(ReasonBadRecipient, "the recipient certificate is not a DER X.509 certificate")
	}
	if err := checkRecipient(recipient, r.now()); err != nil {
		return RecoveryRequest{}, err
	}
	want := make([]string, 0, len(thumbprints))
	for _, t := range thumbprints {
		t = strings.ToLower(strings.ReplaceAll(strings.TrimSpace(t), ":", ""))
		if b, err := hex.DecodeString(t); err != nil || len(b) != sha256.Size {
			return RecoveryRequest{}, reject(ReasonBadThumbprint, fmt.Sprintf("%q is not a SHA-256 thumbprint (64 hex digits)", t))
		}
		if !slices.Contains(want, t) {
			want = append(want, t)
		}
	}
	// What is asked for must be in escrow now (metadata only: no key is
	// decrypted before the quorum).
	if err := r.inEscrow(ctx, user, want); err != nil {
		return RecoveryRequest{}, err
	}
	id := make([]byte, 12)
	if _, err := rand.Read(id); err != nil {
		return RecoveryRequest{}, err
	}
	now := r.now().UTC()
	req := RecoveryRequest{ID: hex.EncodeToString(id), User: user, Thumbprints: want, Reason: reason, Requester: ActorFrom(ctx),
		RecipientDER: recipient.Raw, CreatedAt: now, Deadline: now.Add(r.cfg.Deadline), Quorum: r.cfg.Quorum, State: RecoveryPending}
	ev := r.event(ctx, req, ActionRecoveryRequest, "ok", fmt.Sprintf("recovery %s requested (quorum %d, deadline %s); reason: %s", req.ID, req.Quorum, req.Deadline.Format(time.RFC3339), reason))
	if err := r.audit.Record(ctx, ev); err != nil {
		return RecoveryRequest{}, fmt.Errorf("policy: the recovery request could not be audited, so it was not filed: %w", err)
	}
	if err := r.store.CreateRecovery(ctx, req); err != nil {
		return RecoveryRequest{}, err
	}
	r.notify(ctx, ev)
	return req, nil
}

// checkRecipient requires a non-CA certificate with an RSA key of 2048 to
// 8192 bits, valid now, that may encrypt keys: keyEncipherment when it has
// a key usage, emailProtection or any when it has extended ones.
func checkRecipient(c *x509.Certificate, now time.Time) error {
	pub, ok := c.PublicKey.(*rsa.PublicKey)
	if !ok {
		return reject(ReasonBadRecipient, fmt.Sprintf("the recipient certificate's key is %s; the release is encrypted with RSA key transport", c.PublicKeyAlgorithm))
	}
	if bits := pub.N.BitLen(); bits < 2048 || bits > 8192 {
		return reject(ReasonBadRecipient, fmt.Sprintf("the recipient certificate's RSA key has %d bits; 2048 to 8192 are accepted", bits))
	}
	if len(c.ExtKeyUsage) > 0 && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageEmailProtection) && !slices.Contains(c.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return reject(ReasonBadRecipient, "the recipient certificate's extended key usage has neither emailProtection nor any: name the officer's encryption certificate")
	}
	if now.Before(c.NotBefore) || now.After(c.NotAfter) {
		return reject(ReasonBadRecipient, "the recipient certificate is not valid now")
	}
	if c.KeyUsage != 0 && c.KeyUsage&x509.KeyUsageKeyEncipherment == 0 {
		return reject(ReasonBadRecipient, "the recipient certificate may not encrypt keys (no keyEncipherment): name the officer's encryption certificate")
	}
	if c.IsCA {
		return reject(ReasonBadRecipient, "the recipient certificate is a CA certificate: name the officer's own encryption certificate")
	}
	return nil
}

// Vote records the caller's approval or rejection of request id. An
// approver votes once, never on their own request, and only while the
// request is pending and before its deadline; a rejection ends it, the
// quorum's last approval approves it.
func (r *Recoveries) Vote(ctx context.Context, id string, approve bool, comment string) (RecoveryRequest, error) {
	if err := CheckText("the comment", comment); err != nil {
		return RecoveryRequest{}, err
	}
	if _, err := r.get(ctx, id); err != nil { // expires it if due
		return RecoveryRequest{}, err
	}
	voter := ActorFrom(ctx)
	now := r.now().UTC()
	action := ActionRecoveryApprove
	if !approve {
		action = ActionRecoveryReject
	}
	req, err := r.store.UpdateRecovery(ctx, id, func(q *RecoveryRequest) error {
		switch {
		case q.State != RecoveryPending:
			return reject(ReasonRecoveryClosed, fmt.Sprintf("recovery %s is %s: it takes no more votes", q.ID, q.State))
		case !now.Before(q.Deadline):
			return reject(ReasonRecoveryClosed, fmt.Sprintf("recovery %s expired at %s", q.ID, q.Deadline.Format(time.RFC3339)))
		case voter.Name == "" || voter.Name == q.Requester.Name:
			return reject(ReasonSelfApproval, fmt.Sprintf("%q asked for recovery %s and cannot vote on it: another approver must", voter.Name, q.ID))
		}
		for _, v := range q.Votes {
			if v.Approver.Name == voter.Name {
				return reject(ReasonDoubleVote, fmt.Sprintf("%q already voted on recovery %s", voter.Name, q.ID))
			}
		}
		q.Votes = append(q.Votes, RecoveryVote{Approver: voter, Approve: approve, Comment: comment, At: now})
		approvals := 0
		for _, v := range q.Votes {
			if v.Approve {
				approvals++
			}
		}
		switch {
		case !approve:
			q.State = RecoveryRejected
		case approvals >= q.Quorum:
			q.State = RecoveryApproved
		}
		return nil
	})
	if err != nil {
		if re, ok := IsReject(err); ok {
			r.audit.Audit(ctx, Event{Time: now, Actor: voter, Action: action, Result: "refused", Detail: "recovery " + id + ": " + re.Error()})
		}
		return RecoveryRequest{}, err
	}
	ev := r.event(ctx, req, action, "ok", fmt.Sprintf("recovery %s: %s by %s (now %s); comment: %s", req.ID, map[bool]string{true: "approved", false: "rejected"}[approve], voter.Name, req.State, comment))
	ev.Actor = voter
	// The vote is stored; an audit failure is reported, the vote stands
	// (it releases nothing by itself).
	if err := r.audit.Record(ctx, ev); err != nil {
		return req, fmt.Errorf("policy: the vote was recorded but could not be audited: %w", err)
	}
	r.notify(ctx, ev)
	return req, nil
}

// Download returns the release of approved request id to the officer who
// asked for it, once: CMS EnvelopedData to the request's recipient
// certificate, whose content is PEM — per certificate its PKCS#8 key as
// escrowed, then the certificate. The request is marked released before
// the envelope leaves, and audited; no audit, no release.
func (r *Recoveries) Download(ctx context.Context, id string) ([]byte, RecoveryRequest, error) {
	req, err := r.get(ctx, id)
	if err != nil {
		return nil, RecoveryRequest{}, err
	}
	caller := ActorFrom(ctx)
	now := r.now().UTC()
	refuse := func(reason Reason, detail string) ([]byte, RecoveryRequest, error) {
		err := reject(reason, detail)
		r.audit.Audit(ctx, Event{Time: now, Actor: caller, Action: ActionKeyRecovery, User: req.User, Result: "refused", Detail: "recovery " + id + ": " + err.Error()})
		return nil, RecoveryRequest{}, err
	}
	switch {
	case caller.Name != req.Requester.Name:
		return refuse(ReasonNotRequester, fmt.Sprintf("only %q, who asked for recovery %s, can download it", req.Requester.Name, id))
	case req.State == RecoveryReleased:
		return refuse(ReasonRecoveryClosed, fmt.Sprintf("recovery %s was downloaded at %s; a release is given once", id, req.ReleasedAt.Format(time.RFC3339)))
	case req.State != RecoveryApproved:
		return refuse(ReasonRecoveryClosed, fmt.Sprintf("recovery %s is %s, not approved: it releases nothing", id, req.State))
	}
	recipient, err := x509.ParseCertificate(req.RecipientDER)
	if err != nil {
		return nil, RecoveryRequest{}, fmt.Errorf("policy: recovery %s: stored recipient: %w", id, err)
	}
	keys, err := r.selectKeys(ctx, req.User, req.Thumbprints)
	if err != nil {
		return nil, RecoveryRequest{}, err
	}
	var content bytes.Buffer
	var sums []string
	for _, k := range keys {
		pem.Encode(&content, &pem.Block{Type: "PRIVATE KEY", Bytes: k.KeyPKCS8})
		pem.Encode(&content, &pem.Block{Type: "CERTIFICATE", Bytes: k.CertDER})
		sums = append(sums, k.SHA256)
		clear(k.KeyPKCS8)
	}
	env, err := pfxconnector.Envelope(content.Bytes(), recipient, pfxconnector.PKCS1v15)
	if b := content.Bytes(); len(b) > 0 {
		clear(b[:cap(b)])
	}
	if err != nil {
		return nil, RecoveryRequest{}, fmt.Errorf("policy: recovery %s: envelope: %w", id, err)
	}
	req, err = r.store.UpdateRecovery(ctx, id, func(q *RecoveryRequest) error {
		if q.State != RecoveryApproved {
			return reject(ReasonRecoveryClosed, fmt.Sprintf("recovery %s is %s: a release is given once", id, q.State))
		}
		if !now.Before(q.Deadline) {
			return reject(ReasonRecoveryClosed, fmt.Sprintf("recovery %s expired at %s", id, q.Deadline.Format(time.RFC3339)))
		}
		q.State, q.ReleasedAt = RecoveryReleased, now
		return nil
	})
	if err != nil {
		if re, ok := IsReject(err); ok { // another node's download came first
			r.audit.Audit(ctx, Event{Time: now, Actor: caller, Action: ActionKeyRecovery, User: req.User, Result: "refused", Detail: "recovery " + id + ": " + re.Error()})
		}
		return nil, RecoveryRequest{}, err
	}
	ev := r.event(ctx, req, ActionKeyRecovery, "ok", fmt.Sprintf("recovery %s released to %s, approved by %s", id, req.Requester.Name, strings.Join(approvers(req), ", ")))
	ev.Actor, ev.SHA256 = caller, sums
	if err := r.audit.Record(ctx, ev); err != nil {
		return nil, RecoveryRequest{}, fmt.Errorf("policy: the release could not be audited, so nothing was released (the request is spent; file a new one): %w", err)
	}
	r.notify(ctx, ev)
	return env, req, nil
}

// Get returns request id (expired, and audited so, once its deadline has
// passed without a release).
func (r *Recoveries) Get(ctx context.Context, id string) (RecoveryRequest, error) {
	return r.get(ctx, id)
}

// List returns the requests (of user, when not empty), newest first,
// expiring those whose deadline has passed.
func (r *Recoveries) List(ctx context.Context, user string) ([]RecoveryRequest, error) {
	if user != "" {
		var err error
		if user, err = NormalizeEmail(user); err != nil {
			return nil, err
		}
	}
	list, err := r.store.ListRecoveries(ctx, user)
	if err != nil {
		return nil, err
	}
	for i := range list {
		if list[i], err = r.expire(ctx, list[i]); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(list, func(a, b RecoveryRequest) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return list, nil
}

func (r *Recoveries) get(ctx context.Context, id string) (RecoveryRequest, error) {
	if b, err := hex.DecodeString(id); err != nil || len(b) != 12 {
		return RecoveryRequest{}, reject(ReasonUnknownRecovery, fmt.Sprintf("%q is not a recovery id (24 hex digits)", id))
	}
	req, err := r.store.Recovery(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return RecoveryRequest{}, reject(ReasonUnknownRecovery, "no recovery request "+id)
	} else if err != nil {
		return RecoveryRequest{}, err
	}
	return r.expire(ctx, req)
}

// expire marks a pending or approved request past its deadline expired,
// and audits it, once (the first node to see it).
func (r *Recoveries) expire(ctx context.Context, req RecoveryRequest) (RecoveryRequest, error) {
	now := r.now().UTC()
	if (req.State != RecoveryPending && req.State != RecoveryApproved) || now.Before(req.Deadline) {
		return req, nil
	}
	changed := false
	req, err := r.store.UpdateRecovery(ctx, req.ID, func(q *RecoveryRequest) error {
		if q.State == RecoveryPending || q.State == RecoveryApproved {
			q.State, changed = RecoveryExpired, true
		}
		return nil
	})
	if err != nil || !changed {
		return req, err
	}
	ev := r.event(ctx, req, ActionRecoveryExpire, "ok", fmt.Sprintf("recovery %s expired at %s with %d of %d approvals, nothing released", req.ID, req.Deadline.Format(time.RFC3339), len(approvers(req)), req.Quorum))
	ev.Actor = Actor{Role: "system", Name: "smimeca serve"}
	r.audit.Audit(ctx, ev)
	r.notify(ctx, ev)
	return req, nil
}

// inEscrow reports whether user has escrowed certificates, with every
// thumbprint among them.
func (r *Recoveries) inEscrow(ctx context.Context, user string, thumbprints []string) error {
	if r.keys == nil {
		return reject(ReasonNotEscrowed, "no escrow is configured")
	}
	list, err := r.keys.List(ctx, user)
	if errors.Is(err, ErrNotFound) || (err == nil && len(list) == 0) {
		return reject(ReasonNotEscrowed, user+" has nothing in escrow")
	} else if err != nil {
		return err
	}
	for _, t := range thumbprints {
		if !slices.ContainsFunc(list, func(e Escrowed) bool { return e.SHA256 == t }) {
			return reject(ReasonNotEscrowed, fmt.Sprintf("%s has no escrowed certificate %s", user, t))
		}
	}
	return nil
}

// selectKeys returns the user's escrowed keys with the thumbprints (all when
// none), every thumbprint found.
func (r *Recoveries) selectKeys(ctx context.Context, user string, thumbprints []string) ([]EscrowedKey, error) {
	if r.keys == nil {
		return nil, reject(ReasonNotEscrowed, "no escrow is configured")
	}
	all, err := r.keys.Load(ctx, user)
	if errors.Is(err, ErrNotFound) || (err == nil && len(all) == 0) {
		return nil, reject(ReasonNotEscrowed, user+" has nothing in escrow")
	} else if err != nil {
		return nil, err
	}
	if len(thumbprints) == 0 {
		return all, nil
	}
	var out []EscrowedKey
	for _, t := range thumbprints {
		i := slices.IndexFunc(all, func(k EscrowedKey) bool { return k.SHA256 == t })
		if i < 0 {
			for _, k := range all {
				clear(k.KeyPKCS8)
			}
			return nil, reject(ReasonNotEscrowed, fmt.Sprintf("%s has no escrowed certificate %s", user, t))
		}
		out = append(out, all[i])
	}
	for _, k := range all {
		if !slices.Contains(thumbprints, k.SHA256) {
			clear(k.KeyPKCS8)
		}
	}
	return out, nil
}

// event is a step's audit event, with the request's user, thumbprints and
// recipient.
func (r *Recoveries) event(ctx context.Context, req RecoveryRequest, action, result, detail string) Event {
	return Event{Time: r.now().UTC(), Actor: ActorFrom(ctx), Action: action, User: req.User, SHA256: req.Thumbprints,
		Recipient: req.RecipientSHA256(), Result: result, Detail: detail}
}

func (r *Recoveries) notify(ctx context.Context, e Event) {
	if r.cfg.Notify != nil {
		r.cfg.Notify(ctx, e)
	}
}

// approvers returns the names of the request's approvers.
func approvers(req RecoveryRequest) []string {
	var out []string
	for _, v := range req.Votes {
		if v.Approve {
			out = append(out, v.Approver.Name)
		}
	}
	return out
}
