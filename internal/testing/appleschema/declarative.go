package appleschema

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"
)

// Declarative checks Declarative Device Management declarations and
// credential asset documents against Apple's schema (declarative/ of
// apple/device-management): the declaration base keys, each payload's
// keys, types, required keys and ranges for iOS, and every asset
// reference (a key with assettypes) naming a declaration of an allowed
// type in the same set.
type Declarative struct {
	base         []Key
	declarations map[string]*declFile
	credentials  map[string]*declFile
}

type declFile struct {
	Payload struct {
		DeclarationType string                    `json:"declarationtype"`
		CredentialType  string                    `json:"credentialtype"`
		SupportedOS     map[string]map[string]any `json:"supportedOS"`
	} `json:"payload"`
	PayloadKeys []Key `json:"payloadkeys"`
}

// DeclarativeDir returns the declarative schema directory: the sibling
// declarative/ of Dir's mdm/profiles.
func DeclarativeDir() (string, error) {
	d, err := Dir()
	if err != nil {
		return "", err
	}
	p := filepath.Join(filepath.Dir(filepath.Dir(d)), "declarative")
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("the Apple declarative schema is not at %s", p)
	}
	return p, nil
}

// LoadDeclarative reads every YAML schema under dir.
func LoadDeclarative(dir string) (*Declarative, error) {
	d := &Declarative{declarations: map[string]*declFile{}, credentials: map[string]*declFile{}}
	err := filepath.WalkDir(dir, func(p string, e os.DirEntry, err error) error {
		if err != nil || e.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		var f declFile
		if err := yaml.Unmarshal(b, &f); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		switch {
		case f.Payload.DeclarationType == "any":
			d.base = f.PayloadKeys
		case f.Payload.DeclarationType != "":
			d.declarations[f.Payload.DeclarationType] = &f
		case f.Payload.CredentialType != "":
			d.credentials[f.Payload.CredentialType] = &f
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if d.base == nil || len(d.declarations) == 0 {
		return nil, fmt.Errorf("%s lacks declarationbase.yaml or declarations", dir)
	}
	return d, nil
}

func decodeJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return dec.Decode(v)
}

// Validate parses a JSON array of declarations and returns every problem.
func (d *Declarative) Validate(declarations []byte) []error {
	var items []map[string]any
	if err := decodeJSON(declarations, &items); err != nil {
		return []error{fmt.Errorf("not a JSON array of declarations: %w", err)}
	}
	s := &Schema{json: true}
	var errs []error
	types := map[string]string{}
	for i, item := range items {
		typ, _ := item["Type"].(string)
		where := fmt.Sprintf("declaration %d (%s)", i, typ)
		s.checkDict(where, item, d.base, &errs)
		for _, k := range []string{"Identifier", "ServerToken"} {
			if v, _ := item[k].(string); len(v) > 64 {
				errs = append(errs, fmt.Errorf("%s: %s is %d octets, more than 64", where, k, len(v)))
			}
		}
		id, _ := item["Identifier"].(string)
		if _, dup := types[id]; dup {
			errs = append(errs, fmt.Errorf("%s: Identifier %s is used twice", where, id))
		}
		types[id] = typ
		f, ok := d.declarations[typ]
		if !ok {
			errs = append(errs, fmt.Errorf("%s: no schema for this declaration type", where))
			continue
		}
		if why := iOSProblem(f.Payload.SupportedOS); why != "" || f.Payload.SupportedOS["iOS"] == nil {
			errs = append(errs, fmt.Errorf("%s: declaration type not for iOS %s", where, why))
		}
		p, ok := item["Payload"].(map[string]any)
		if !ok {
			errs = append(errs, fmt.Errorf("%s: Payload is not a dictionary", where))
			continue
		}
		s.checkDict(where+".Payload", p, f.PayloadKeys, &errs)
	}
	for _, r := range s.refs {
		typ, ok := types[r.id]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: %s names no declaration of this set", r.where, r.id))
		case !contains(r.allowed, typ):
			errs = append(errs, fmt.Errorf("%s: names a %s declaration, want one of %v", r.where, typ, r.allowed))
		}
	}
	return errs
}

// ValidateCredential checks an asset's document against its credential
// type's schema (com.apple.credential.scep, com.apple.credential.identity).
func (d *Declarative) ValidateCredential(credentialType string, doc []byte) []error {
	f, ok := d.credentials[credentialType]
	if !ok {
		return []error{fmt.Errorf("no schema for credential type %s", credentialType)}
	}
	var m map[string]any
	if err := decodeJSON(doc, &m); err != nil {
		return []error{fmt.Errorf("%s: not a JSON object: %w", credentialType, err)}
	}
	s := &Schema{json: true}
	var errs []error
	s.checkDict(credentialType, m, f.PayloadKeys, &errs)
	return errs
}
