package policy

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"time"

	pfxconnector "github.com/smimeca/smimeca/pfx-connector"
)

// Device assets for Apple's Declarative Device Management (DDM): the
// device fetches its SCEP credential (with its one-time challenge) and
// each escrowed identity (PKCS#12 with its password) itself, from
// smimeca, authenticated by its registered identity certificate over
// mutual TLS; the MDM only serves the declarations, which carry each
// asset's URL, size and SHA-256. So an asset's bytes must be the same at
// rendering and at every fetch: its secrets (the challenge, the PKCS#12's
// password, salts and IVs) are derived with HMAC-SHA-256 from the
// installation's asset secret and what the asset is bound to — the user,
// the device, its identity certificate, the escrowed certificate or the
// signing revision. A new identity, a changed escrow or a new revision
// changes the asset and its hash, and the device fetches it again.

// AssetKind names a kind of device asset.
type AssetKind string

// Asset kinds.
const (
	// AssetSCEP is the SCEP credential of the device's signing identity.
	AssetSCEP AssetKind = "scep"
	// AssetIdentity is one escrowed encryption identity.
	AssetIdentity AssetKind = "identity"
)

// MinAssetSecret is the smallest asset secret accepted (256 bits).
const MinAssetSecret = 32

// WithAssetSecret enables DDM device assets (DeviceAssets, ReleaseAsset)
// with the installation's asset secret (at least MinAssetSecret bytes,
// the same on every node).
func WithAssetSecret(secret []byte) BundlesOption {
	return func(b *Bundles) { b.assetSecret = bytes.Clone(secret) }
}

// AssetRequest names the device whose assets are rendered.
type AssetRequest struct {
	User, Device string
	// Generation is the MDM's revision of the signing asset: raising it
	// makes the device enrol a new signing certificate (after a
	// revocation, say). The asset also turns over by itself every two
	// thirds of the signing certificates' validity, counted from the
	// device's registration, so that the device renews in time.
	Generation uint32
	// Encoding of the PKCS#12 files (default Legacy, what iOS reads).
	Encoding PKCS12Encoding
}

// Asset is one device asset with its secrets in the clear, for the
// caller to render into the asset's document and drop: at rendering to
// hash it, at a fetch to answer the device.
type Asset struct {
	Kind AssetKind
	// Ref names the asset in its URL: the signing revision
	// ("<period>.<generation>") or the escrowed certificate's SHA-256.
	Ref string
	// Signing (AssetSCEP) has the challenge in the clear.
	Signing *SigningReference
	// Identity (AssetIdentity) has the PKCS#12 and its password.
	Identity *EncryptionEntry
}

// Clear drops the asset's secrets.
func (a *Asset) Clear() {
	if a.Signing != nil {
		a.Signing.Challenge = ""
	}
	if a.Identity != nil {
		clear(a.Identity.PFX)
		a.Identity.Password = ""
	}
}

// AssetSet is every asset a device's declarations reference: the SCEP
// credential first, then the escrowed identities, the current one first.
type AssetSet struct {
	User, Device string
	// Recipient is the device's registered identity, the only TLS client
	// the assets are served to.
	Recipient *x509.Certificate
	// Chain is root first, then the issuing CA.
	Chain        []*x509.Certificate
	Assets       []Asset
	EscrowNotice string
}

// Clear drops every asset's secrets.
func (s *AssetSet) Clear() {
	for i := range s.Assets {
		s.Assets[i].Clear()
	}
}

// DeviceAssets returns the assets of a registered, active device whose
// identity may receive keys now, with their secrets, for the caller to
// hash into the declarations. Nothing leaves: the event recorded
// (ActionAssetsRender) names the thumbprints and the identity, and no
// challenge is armed until the device fetches its SCEP asset.
func (b *Bundles) DeviceAssets(ctx context.Context, req AssetRequest) (*AssetSet, error) {
	if len(b.assetSecret) < MinAssetSecret {
		return nil, errors.New("policy: device assets are not configured on this server (no asset secret)")
	}
	dev, err := b.enroll.ActiveDevice(ctx, req.User, req.Device)
	if err != nil {
		return nil, err
	}
	recipient, err := b.enroll.ReleasableIdentity(dev)
	if err != nil {
		return nil, err
	}
	now := b.now()
	out := &AssetSet{User: dev.User, Device: dev.ID, Recipient: recipient, Chain: []*x509.Certificate{b.ca.Root(), b.ca.Intermediate()}}
	rev := b.signingRevision(dev, req.Generation, now)
	sig := b.assetSigning(dev, rev)
	out.Assets = append(out.Assets, Asset{Kind: AssetSCEP, Ref: rev, Signing: &sig})
	var recs []EscrowedKey
	if b.keys != nil {
		if recs, err = b.keys.Load(ctx, dev.User); err != nil {
			return nil, fmt.Errorf("policy: device assets: %w", err)
		}
	}
	defer func() {
		for i := range recs {
			clear(recs[i].KeyPKCS8)
		}
	}()
	current := currentKey(recs, now)
	keys, seeds := make([]pfxconnector.DERKey, len(recs)), make([][]byte, len(recs))
	for i, r := range recs {
		keys[i], seeds[i] = derKey(r), b.identitySeed(dev, r, req.Encoding)
	}
	wrapped, errs := pfxconnector.RewrapSeededAll(keys, seeds, req.Encoding)
	for _, s := range seeds {
		clear(s)
	}
	entries := make([]EncryptionEntry, len(recs))
	for i, r := range recs {
		if errs[i] != nil {
			errs[i] = fmt.Errorf("policy: escrowed certificate %s: %w", r.SHA256, errs[i])
		}
		entries[i] = EncryptionEntry{Metadata: r.Escrowed, PFX: wrapped[i].PFX, Password: wrapped[i].Password, Current: i == current, Expired: now.After(r.NotAfter)}
	}
	if err := errors.Join(errs...); err != nil {
		out.Clear()
		for _, e := range entries {
			clear(e.PFX)
		}
		return nil, err
	}
	sortEntries(entries)
	ev := Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionAssetsRender, User: dev.User, Device: dev.ID,
		Recipient: dev.IdentitySHA256(), Result: "ok",
		Detail: fmt.Sprintf("declarations rendered (signing revision %s, %d identity asset(s)): hashes only, nothing released", rev, len(entries))}
	for i := range entries {
		out.Assets = append(out.Assets, Asset{Kind: AssetIdentity, Ref: entries[i].Metadata.SHA256, Identity: &entries[i]})
		ev.SHA256 = append(ev.SHA256, entries[i].Metadata.SHA256)
	}
	if len(entries) > 0 {
		out.EscrowNotice = KeyEscrowNotice
	}
	b.audit.Audit(ctx, ev)
	return out, nil
}

// AssetFetch is a device's request for one of its assets.
type AssetFetch struct {
	User, Device string
	Kind         AssetKind
	// Ref is the asset's Ref from its URL.
	Ref string
	// Client is the certificate the TLS client authenticated with.
	Client   *x509.Certificate
	Encoding PKCS12Encoding
}

var (
	revisionRE   = regexp.MustCompile(`^[0-9]{1,10}\.[0-9]{1,10}$`)
	thumbprintRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ReleaseAsset answers a device's fetch of one of its assets, only when
// the TLS client's certificate is the device's registered identity and
// keys may be released to it now (ReasonNotDeviceIdentity otherwise,
// audited as ActionAssetRefused with the presented certificate's
// SHA-256). render makes the asset's document, which is returned. The SCEP
// asset arms its challenge for the device (once: not after it was used); an identity asset is audited as
// a key release to the identity, and if that cannot be recorded nothing is
// returned.
func (b *Bundles) ReleaseAsset(ctx context.Context, f AssetFetch, render func(*Asset) ([]byte, error)) ([]byte, error) {
	if len(b.assetSecret) < MinAssetSecret {
		return nil, errors.New("policy: device assets are not configured on this server (no asset secret)")
	}
	now := b.now()
	presented := ""
	if f.Client != nil {
		s := sha256.Sum256(f.Client.Raw)
		presented = hex.EncodeToString(s[:])
	}
	refuse := func(why error) error {
		b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionAssetRefused, User: f.User, Device: f.Device,
			Recipient: presented, Result: "refused", Detail: fmt.Sprintf("%s asset %q: %v", f.Kind, f.Ref, why)})
		return reject(ReasonNotDeviceIdentity, "the client certificate is not the registered identity of this device, or keys may not be released to it now")
	}
	dev, err := b.enroll.ActiveDevice(ctx, f.User, f.Device)
	if err != nil {
		return nil, refuse(err)
	}
	if f.Client == nil || !bytes.Equal(f.Client.Raw, dev.Identity) {
		return nil, refuse(errors.New("the client certificate " + presented + " is not the device's identity " + dev.IdentitySHA256()))
	}
	if _, err := b.enroll.ReleasableIdentity(dev); err != nil {
		return nil, refuse(err)
	}
	switch f.Kind {
	case AssetSCEP:
		if !revisionRE.MatchString(f.Ref) {
			return nil, reject(ReasonBadAsset, "a signing revision is <period>.<generation>")
		}
		a := Asset{Kind: AssetSCEP, Ref: f.Ref}
		sig := b.assetSigning(dev, f.Ref)
		a.Signing = &sig
		defer a.Clear()
		doc, err := render(&a)
		if err != nil {
			return nil, err
		}
		// Armed only once the document is made: the device gets exactly
		// the challenge its declaration's hash names. A fetch of a revision
		// whose challenge was used gets the same document, not armed again:
		// a new enrolment needs a new revision.
		_, err = b.enroll.ArmChallenge(ctx, dev.User, dev.ID, b.challengeSeed(dev, f.Ref), "DDM SCEP asset "+f.Ref+", fetched by the device over mutual TLS")
		if re, ok := IsReject(err); ok && re.Reason == ReasonChallengeUsed {
			b.audit.Audit(ctx, Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionChallengeCreate, User: dev.User, Device: dev.ID,
				Result: "refused", Detail: "DDM SCEP asset " + f.Ref + " fetched again: " + re.Detail})
		} else if err != nil {
			return nil, err
		}
		return doc, nil
	case AssetIdentity:
		if !thumbprintRE.MatchString(f.Ref) {
			return nil, reject(ReasonBadAsset, "an identity asset is named by the escrowed certificate's SHA-256 (64 lower-case hex digits)")
		}
		if b.keys == nil {
			return nil, reject(ReasonNotEscrowed, "this server has no escrow")
		}
		// Only the key asked for is decrypted.
		r, err := b.keys.LoadKey(ctx, dev.User, f.Ref)
		if errors.Is(err, ErrNotFound) {
			return nil, reject(ReasonNotEscrowed, "no escrowed certificate "+f.Ref+" for this user (purged, or never imported)")
		} else if err != nil {
			return nil, fmt.Errorf("policy: device asset: %w", err)
		}
		defer clear(r.KeyPKCS8)
		e, err := b.assetIdentity(dev, r, f.Encoding, now)
		if err != nil {
			return nil, err
		}
		a := Asset{Kind: AssetIdentity, Ref: f.Ref, Identity: &e}
		defer a.Clear()
		doc, err := render(&a)
		if err != nil {
			return nil, err
		}
		ev := Event{Time: now.UTC(), Actor: ActorFrom(ctx), Action: ActionKeyRelease, User: dev.User, Device: dev.ID,
			SHA256: []string{r.SHA256}, Recipient: dev.IdentitySHA256(), Result: "ok", EscrowNotice: true,
			Detail: "DDM identity asset, fetched by the device over mutual TLS with its registered identity"}
		if err := b.audit.Record(ctx, ev); err != nil {
			clear(doc)
			return nil, fmt.Errorf("policy: the key release could not be audited, so nothing was released: %w", err)
		}
		return doc, nil
	default:
		return nil, reject(ReasonBadAsset, "asset kinds are scep and identity")
	}
}

// signingRevision names the signing asset's revision at now: the
// renewal period since the device's registration (two thirds of the
// certificates' validity) and the MDM's generation.
func (b *Bundles) signingRevision(dev Device, generation uint32, now time.Time) string {
	period := b.enroll.SigningValidity() * 2 / 3
	var n int64
	if period > 0 && now.After(dev.CreatedAt) {
		n = int64(now.Sub(dev.CreatedAt) / period)
	}
	return strconv.FormatInt(n, 10) + "." + strconv.FormatUint(uint64(generation), 10)
}

// assetSigning is the signing reference of revision rev with its derived
// challenge in the clear.
func (b *Bundles) assetSigning(dev Device, rev string) SigningReference {
	s := b.scepReference(dev.User)
	s.Challenge = encodeChallenge(b.challengeSeed(dev, rev))
	return s
}

func (b *Bundles) challengeSeed(dev Device, rev string) []byte {
	return b.assetSeed("scep", dev.User, dev.ID, dev.IdentitySHA256(), rev)
}

// assetIdentity re-wraps one escrowed key into the device's identity asset
// (as a fetch makes it: DeviceAssets re-wraps them all at once), with the
// same bytes each time for this device identity.
func (b *Bundles) assetIdentity(dev Device, r EscrowedKey, enc PKCS12Encoding, now time.Time) (EncryptionEntry, error) {
	seed := b.identitySeed(dev, r, enc)
	defer clear(seed)
	w, err := pfxconnector.RewrapSeeded(derKey(r), enc, seed)
	if err != nil {
		return EncryptionEntry{}, fmt.Errorf("policy: escrowed certificate %s: %w", r.SHA256, err)
	}
	return EncryptionEntry{Metadata: r.Escrowed, PFX: w.PFX, Password: w.Password, Expired: now.After(r.NotAfter)}, nil
}

// identitySeed is the seed of an identity asset's PKCS#12: bound to the
// device, its identity and the escrowed certificate.
func (b *Bundles) identitySeed(dev Device, r EscrowedKey, enc PKCS12Encoding) []byte {
	return b.assetSeed("identity", dev.User, dev.ID, dev.IdentitySHA256(), r.SHA256, strconv.Itoa(int(enc)))
}

func derKey(r EscrowedKey) pfxconnector.DERKey {
	return pfxconnector.DERKey{CertDER: r.CertDER, KeyPKCS8: r.KeyPKCS8, ChainDER: r.ChainDER}
}

// assetSeed is HMAC-SHA-256 under the asset secret of the NUL-separated
// parts.
func (b *Bundles) assetSeed(parts ...string) []byte {
	m := hmac.New(sha256.New, b.assetSecret)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return m.Sum(nil)
}
