// Package appleschema checks a configuration profile against Apple's
// device-management schema (the YAML files of apple/device-management),
// read at run time from a directory: every key must exist for iOS in its
// payload's schema and not be deprecated there, types must match, required
// keys must be present, rangelist values and formats respected, and every
// certificate UUID reference must point at a payload of the right type in
// the same profile. It is used by tests; the schema is not copied into the
// project.
package appleschema

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"time"

	"howett.net/plist"
	"sigs.k8s.io/yaml"
)

// Key is one key of a schema.
type Key struct {
	Key         string                    `json:"key"`
	Type        string                    `json:"type"`
	Presence    string                    `json:"presence"`
	Rangelist   []any                     `json:"rangelist"`
	Format      string                    `json:"format"`
	SupportedOS map[string]map[string]any `json:"supportedOS"`
	Subkeys     []Key                     `json:"subkeys"`
	// AssetTypes, on a declaration's key, are the declaration types an
	// asset reference may name.
	AssetTypes []string `json:"assettypes"`
}

type file struct {
	Payload struct {
		PayloadType string                    `json:"payloadtype"`
		SupportedOS map[string]map[string]any `json:"supportedOS"`
	} `json:"payload"`
	PayloadKeys []Key `json:"payloadkeys"`
}

// Schema is a loaded set of payload schemas.
type Schema struct {
	payloads map[string]*file
	common   []Key
	top      []Key
	// json: values come from JSON (declarations): data is base64 text,
	// numbers are json.Number.
	json bool
	// refs collects asset references met while checking declarations.
	refs []assetRef
}

type assetRef struct {
	where, id string
	allowed   []string
}

// Dir returns the schema directory: $SMIMECA_APPLE_SCHEMA, or
// ../shared/reference/apple-device-management/mdm/profiles above the module
// root found from the working directory.
func Dir() (string, error) {
	if d := os.Getenv("SMIMECA_APPLE_SCHEMA"); d != "" {
		return d, nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; d != filepath.Dir(d); d = filepath.Dir(d) {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			p := filepath.Join(filepath.Dir(d), "shared", "reference", "apple-device-management", "mdm", "profiles")
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("the Apple schema is not at %s (shared/ must sit beside the checkout, or set SMIMECA_APPLE_SCHEMA)", p)
			}
			return p, nil
		}
	}
	return "", fmt.Errorf("no go.mod above %s", wd)
}

// Load reads every YAML schema in dir.
func Load(dir string) (*Schema, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(paths) == 0 {
		return nil, fmt.Errorf("no schema files in %s", dir)
	}
	s := &Schema{payloads: map[string]*file{}}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, err
		}
		var f file
		if err := yaml.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(p), err)
		}
		switch f.Payload.PayloadType {
		case "CommonPayloadKeys":
			s.common = f.PayloadKeys
		case "TopLevel":
			s.top = f.PayloadKeys
		default:
			s.payloads[f.Payload.PayloadType] = &f
		}
	}
	if s.top == nil || s.common == nil {
		return nil, fmt.Errorf("%s lacks TopLevel.yaml or CommonPayloadKeys.yaml", dir)
	}
	return s, nil
}

// certificateRefs says which payload types a UUID-valued key may name.
var certificateRefs = map[string][]string{
	"SMIMESigningCertificateUUID":    {"com.apple.security.scep", "com.apple.security.pkcs12"},
	"SMIMEEncryptionCertificateUUID": {"com.apple.security.pkcs12", "com.apple.security.scep"},
	"PayloadCertificateUUID":         {"com.apple.security.scep", "com.apple.security.pkcs12"},
}

// Validate parses an XML profile and returns every problem found.
func (s *Schema) Validate(profile []byte) []error {
	var top map[string]any
	if _, err := plist.Unmarshal(profile, &top); err != nil {
		return []error{fmt.Errorf("not a property list: %w", err)}
	}
	var errs []error
	add := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if top["PayloadType"] != "Configuration" {
		add("top level: PayloadType %v, want Configuration", top["PayloadType"])
	}
	topKeys := make([]Key, 0, len(s.top))
	for _, k := range s.top {
		if k.Key != "PayloadContent" {
			topKeys = append(topKeys, k)
		}
	}
	rest := map[string]any{}
	for k, v := range top {
		if k != "PayloadContent" {
			rest[k] = v
		}
	}
	s.checkDict("top level", rest, topKeys, &errs)
	content, ok := top["PayloadContent"].([]any)
	if !ok {
		add("top level: PayloadContent is not an array")
		return errs
	}
	byUUID := map[string]string{}
	for i, item := range content {
		p, ok := item.(map[string]any)
		if !ok {
			add("payload %d is not a dictionary", i)
			continue
		}
		typ, _ := p["PayloadType"].(string)
		where := fmt.Sprintf("payload %d (%s)", i, typ)
		f, ok := s.payloads[typ]
		if !ok {
			add("%s: no schema for this payload type", where)
			continue
		}
		if _, ok := f.Payload.SupportedOS["iOS"]; !ok {
			add("%s: payload type is not supported on iOS", where)
		} else if why := iOSProblem(f.Payload.SupportedOS); why != "" {
			add("%s: payload type %s on iOS", where, why)
		}
		keys := append(append([]Key{}, s.common...), f.PayloadKeys...)
		s.checkDict(where, p, keys, &errs)
		if u, _ := p["PayloadUUID"].(string); u != "" {
			if _, dup := byUUID[u]; dup {
				add("%s: PayloadUUID %s is used twice", where, u)
			}
			byUUID[u] = typ
		}
	}
	for i, item := range content {
		p, _ := item.(map[string]any)
		for key, allowed := range certificateRefs {
			v, ok := p[key].(string)
			if !ok {
				continue
			}
			typ, found := byUUID[v]
			switch {
			case !found:
				add("payload %d: %s %s names no payload of this profile", i, key, v)
			case !contains(allowed, typ):
				add("payload %d: %s names a %s payload, want one of %v", i, key, typ, allowed)
			}
		}
	}
	return errs
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// iOSProblem says why a key or payload is not for current iOS, or "".
func iOSProblem(os map[string]map[string]any) string {
	if os == nil {
		return ""
	}
	ios, ok := os["iOS"]
	if !ok {
		// A key's supportedOS lists only what differs from its payload's;
		// no iOS entry means it inherits the payload's iOS support.
		return ""
	}
	if v, ok := ios["introduced"]; ok && fmt.Sprint(v) == "n/a" {
		return "is not available"
	}
	if v, ok := ios["deprecated"]; ok && v != nil {
		return fmt.Sprintf("is deprecated since %v", v)
	}
	if v, ok := ios["removed"]; ok && v != nil {
		return fmt.Sprintf("was removed in %v", v)
	}
	return ""
}

func (s *Schema) checkDict(where string, d map[string]any, keys []Key, errs *[]error) {
	byName := map[string]Key{}
	for _, k := range keys {
		byName[k.Key] = k
	}
	names := make([]string, 0, len(d))
	for k := range d {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		k, ok := byName[name]
		if !ok {
			*errs = append(*errs, fmt.Errorf("%s: key %q is not in Apple's schema", where, name))
			continue
		}
		if why := iOSProblem(k.SupportedOS); why != "" {
			*errs = append(*errs, fmt.Errorf("%s: key %q %s on iOS", where, name, why))
		}
		s.checkValue(where+"."+name, d[name], k, errs)
	}
	for _, k := range keys {
		if k.Presence == "required" {
			if _, ok := d[k.Key]; !ok {
				*errs = append(*errs, fmt.Errorf("%s: required key %q is missing", where, k.Key))
			}
		}
	}
}

func (s *Schema) checkValue(where string, v any, k Key, errs *[]error) {
	bad := func(format string, a ...any) { *errs = append(*errs, fmt.Errorf(where+": "+format, a...)) }
	switch k.Type {
	case "<string>":
		str, ok := v.(string)
		if !ok {
			bad("type %T, want string", v)
			return
		}
		if k.Format != "" && !regexp.MustCompile(k.Format).MatchString(str) {
			bad("%q does not match %s", str, k.Format)
		}
		if len(k.AssetTypes) > 0 {
			s.refs = append(s.refs, assetRef{where: where, id: str, allowed: k.AssetTypes})
		}
	case "<boolean>":
		if _, ok := v.(bool); !ok {
			bad("type %T, want boolean", v)
		}
	case "<integer>":
		switch n := v.(type) {
		case uint64, int64, int, int32, uint32:
		case json.Number:
			if _, err := n.Int64(); err != nil || !s.json {
				bad("%v is not an integer", n)
			}
		default:
			bad("type %T, want integer", v)
			return
		}
	case "<real>":
		if _, ok := v.(float64); !ok {
			if n, isNum := v.(json.Number); !isNum || !s.json {
				bad("type %T, want real", v)
			} else if _, err := n.Float64(); err != nil {
				bad("%v is not a number", n)
			}
		}
	case "<data>":
		if str, ok := v.(string); ok && s.json {
			if b, err := base64.StdEncoding.DecodeString(str); err != nil || len(b) == 0 {
				bad("not non-empty base64 data")
			}
		} else if b, ok := v.([]byte); !ok || len(b) == 0 {
			bad("type %T, want non-empty data", v)
		}
	case "<date>":
		if _, ok := v.(time.Time); !ok {
			bad("type %T, want date", v)
		}
	case "<dictionary>":
		m, ok := v.(map[string]any)
		if !ok {
			bad("type %T, want dictionary", v)
			return
		}
		if len(k.Subkeys) > 0 {
			s.checkDict(where, m, k.Subkeys, errs)
		}
	case "<array>":
		a, ok := v.([]any)
		if !ok {
			bad("type %T, want array", v)
			return
		}
		if len(k.Subkeys) == 1 {
			for i, item := range a {
				s.checkValue(fmt.Sprintf("%s[%d]", where, i), item, k.Subkeys[0], errs)
			}
		}
	case "<any>", "":
	default:
		bad("unknown schema type %s", k.Type)
	}
	if len(k.Rangelist) > 0 {
		found := false
		for _, r := range k.Rangelist {
			if fmt.Sprint(r) == fmt.Sprint(v) {
				found = true
			}
		}
		if !found {
			bad("%v is not one of %v", v, k.Rangelist)
		}
	}
}

// Payloads returns the profile's payloads by PayloadType, for tests that
// look inside.
func Payloads(profile []byte) (map[string][]map[string]any, error) {
	var top map[string]any
	if _, err := plist.Unmarshal(profile, &top); err != nil {
		return nil, err
	}
	out := map[string][]map[string]any{}
	content, _ := top["PayloadContent"].([]any)
	for _, item := range content {
		if p, ok := item.(map[string]any); ok {
			t, _ := p["PayloadType"].(string)
			out[t] = append(out[t], p)
		}
	}
	return out, nil
}

// Decrypted returns an encrypted profile (IsEncrypted, EncryptedPayloadContent)
// as the plain profile it stands for: decrypt opens EncryptedPayloadContent
// (the PayloadContent array as a property list), which takes the place of
// the two keys. Tests validate the result as any other profile.
func Decrypted(profile []byte, decrypt func([]byte) ([]byte, error)) ([]byte, error) {
	var top map[string]any
	if _, err := plist.Unmarshal(profile, &top); err != nil {
		return nil, err
	}
	if _, ok := top["PayloadContent"]; ok {
		return nil, fmt.Errorf("an encrypted profile carries PayloadContent in the clear")
	}
	if enc, _ := top["IsEncrypted"].(bool); !enc {
		return nil, fmt.Errorf("IsEncrypted is not true")
	}
	ct, ok := top["EncryptedPayloadContent"].([]byte)
	if !ok {
		return nil, fmt.Errorf("no EncryptedPayloadContent data")
	}
	inner, err := decrypt(ct)
	if err != nil {
		return nil, fmt.Errorf("decrypt EncryptedPayloadContent: %w", err)
	}
	var content []any
	if _, err := plist.Unmarshal(inner, &content); err != nil {
		return nil, fmt.Errorf("EncryptedPayloadContent is not a property list array: %w", err)
	}
	delete(top, "IsEncrypted")
	delete(top, "EncryptedPayloadContent")
	top["PayloadContent"] = content
	return plist.MarshalIndent(top, plist.XMLFormat, "\t")
}
