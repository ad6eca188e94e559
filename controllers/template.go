package controllers

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"

	"sigs.k8s.io/yaml"

	kmsv1alpha1 "github.com/kms-key-sync/kms-key-sync/api/v1alpha1"
	"github.com/kms-key-sync/kms-key-sync/internal/kms"
)

const (
	// maxTemplateOutput caps what all templates of a selector render together, so a template
	// cannot make the operator hold more than a ConfigMap could take.
	maxTemplateOutput = maxConfigMapDataBytes
	// templateTimeout bounds the execution of a selector's templates.
	templateTimeout = 2 * time.Second
)

// templates are the parsed templates of a spec.target.template, by entry name.
type templates struct {
	byEntry map[string]*template.Template
	replace bool
}

// entry returns the template of an entry name; t may be nil.
func (t *templates) entry(name string) (*template.Template, bool) {
	if t == nil {
		return nil, false
	}
	tpl, ok := t.byEntry[name]
	return tpl, ok
}

// defines tells whether a template renders the entry name; t may be nil.
func (t *templates) defines(name string) bool {
	_, ok := t.entry(name)
	return ok
}

// templateFuncs are the functions a template may call; byAlias is bound to the keys of each
// execution. None touches the network, the file system, the environment or the clock.
func templateFuncs(keys []keyRecord) template.FuncMap {
	return template.FuncMap{
		"enabled":    func(list []keyRecord) []keyRecord { return inState(kms.StateEnabled.String(), list) },
		"inState":    inState,
		"withTag":    withTag,
		"byAlias":    func(alias string) (keyRecord, error) { return byAlias(keys, alias) },
		"first":      first,
		"sortBy":     sortBy,
		"ids":        ids,
		"join":       func(sep string, list []string) string { return strings.Join(list, sep) },
		"toJson":     toJSON,
		"toYaml":     toYAML,
		"upper":      strings.ToUpper,
		"lower":      strings.ToLower,
		"replace":    func(old, new, s string) string { return strings.ReplaceAll(s, old, new) },
		"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
		"trimSuffix": func(suffix, s string) string { return strings.TrimSuffix(s, suffix) },
	}
}

// parseTemplates parses a spec.target.template. An error is an InvalidSpec failure that names
// the entry, the line and the column.
func parseTemplates(t *kmsv1alpha1.TargetTemplate) (*templates, error) {
	if t == nil {
		return nil, nil
	}
	out := &templates{byEntry: map[string]*template.Template{}, replace: t.MergePolicy == kmsv1alpha1.MergePolicyReplace}
	for _, name := range sortedKeys(t.Data) {
		src := t.Data[name]
		tpl, err := template.New(name).Option("missingkey=error").Funcs(templateFuncs(nil)).Parse(src)
		if err == nil {
			err = refuseRangeOverNumbers(tpl.Tree)
		}
		if err != nil {
			return nil, failedf(kmsv1alpha1.ReasonInvalidSpec, "spec.target.template.data[%q]: %s", name, positioned(err, src))
		}
		out.byEntry[name] = tpl
	}
	return out, nil
}

// refuseRangeOverNumbers refuses {{range 1000000000}}, the one way a template could loop
// without bound on its own.
func refuseRangeOverNumbers(tree *parse.Tree) error {
	var err error
	var walk func(parse.Node)
	walk = func(n parse.Node) {
		if err != nil || n == nil || reflect.ValueOf(n).IsNil() {
			return
		}
		var branch *parse.BranchNode
		switch n := n.(type) {
		case *parse.ListNode:
			for _, c := range n.Nodes {
				walk(c)
			}
		case *parse.RangeNode:
			for _, cmd := range n.Pipe.Cmds {
				for _, arg := range cmd.Args {
					if _, ok := arg.(*parse.NumberNode); ok {
						location, _ := tree.ErrorContext(n)
						err = fmt.Errorf("template: %s: range over a number is not allowed", location)
					}
				}
			}
			branch = &n.BranchNode
		case *parse.IfNode:
			branch = &n.BranchNode
		case *parse.WithNode:
			branch = &n.BranchNode
		}
		if branch != nil {
			walk(branch.List)
			walk(branch.ElseList)
		}
	}
	walk(tree.Root)
	return err
}

var (
	parseErrorPattern = regexp.MustCompile(`^template: [^:]*:(\d+)(?::(\d+))?: (.*)$`)
	quotedName        = regexp.MustCompile(`"([^"]+)"`)
)

// positioned rewrites a parse error as "line L, column C: message". text/template gives the
// line only; the column is where the name the message quotes stands on that line, or else the
// first action on it.
func positioned(err error, src string) string {
	m := parseErrorPattern.FindStringSubmatch(err.Error())
	if m == nil {
		return err.Error()
	}
	line, _ := strconv.Atoi(m[1])
	if m[2] != "" {
		return fmt.Sprintf("line %d, column %s: %s", line, m[2], m[3])
	}
	lines := strings.Split(src, "\n")
	if line < 1 || line > len(lines) {
		return fmt.Sprintf("line %d: %s", line, m[3])
	}
	text := lines[line-1]
	col := max(strings.Index(text, "{{"), 0)
	if q := quotedName.FindStringSubmatch(m[3]); q != nil {
		if i := strings.Index(text, q[1]); i >= 0 {
			col = i
		}
	}
	return fmt.Sprintf("line %d, column %d: %s", line, col+1, m[3])
}

// render executes every template on the records. Entries are rendered in name order; an error
// is a TemplateFailed failure naming the entry and the position.
func (t *templates) render(records []keyRecord) (map[string]string, error) {
	type result struct {
		out map[string]string
		err error
	}
	done := make(chan result, 1)
	deadline := time.Now().Add(templateTimeout)
	go func() {
		out := map[string]string{}
		w := &cappedBuffer{limit: maxTemplateOutput, deadline: deadline}
		for _, name := range sortedKeys(t.byEntry) {
			tpl, err := t.byEntry[name].Clone()
			if err == nil {
				err = tpl.Funcs(templateFuncs(records)).Execute(w, map[string]any{"Keys": records})
			}
			if err != nil {
				done <- result{err: failedf(kmsv1alpha1.ReasonTemplateFailed, "spec.target.template.data[%q]: %s", name, strings.TrimPrefix(err.Error(), "template: "))}
				return
			}
			out[name] = w.take()
		}
		done <- result{out: out}
	}()
	select {
	case r := <-done:
		return r.out, r.err
	case <-time.After(time.Until(deadline) + 100*time.Millisecond):
		return nil, failedf(kmsv1alpha1.ReasonTemplateFailed, "spec.target.template: rendering took longer than %s", templateTimeout)
	}
}

// cappedBuffer collects output until the cap or the deadline, then fails every write.
type cappedBuffer struct {
	buf      bytes.Buffer
	total    int
	limit    int
	deadline time.Time
}

var errOutputTooLarge = errors.New("output too large")

func (b *cappedBuffer) Write(p []byte) (int, error) {
	if b.total += len(p); b.total > b.limit {
		return 0, fmt.Errorf("%w: the templates render more than %d bytes", errOutputTooLarge, b.limit)
	}
	if time.Now().After(b.deadline) {
		return 0, fmt.Errorf("rendering took longer than %s", templateTimeout)
	}
	return b.buf.Write(p)
}

func (b *cappedBuffer) take() string {
	s := b.buf.String()
	b.buf.Reset()
	return s
}

func inState(state string, list []keyRecord) []keyRecord {
	return slices.DeleteFunc(slices.Clone(list), func(k keyRecord) bool { return k.State != state })
}

func withTag(key, value string, list []keyRecord) []keyRecord {
	return slices.DeleteFunc(slices.Clone(list), func(k keyRecord) bool {
		v, ok := k.Tags[key]
		return !ok || v != value
	})
}

func byAlias(keys []keyRecord, alias string) (keyRecord, error) {
	for _, k := range keys {
		if k.Alias == alias {
			return k, nil
		}
	}
	return keyRecord{}, fmt.Errorf("no matching key has the alias %q", alias)
}

func first(list []keyRecord) (keyRecord, error) {
	if len(list) == 0 {
		return keyRecord{}, errors.New("first of an empty list")
	}
	return list[0], nil
}

func ids(list []keyRecord) []string {
	out := make([]string, len(list))
	for i, k := range list {
		out[i] = k.ID
	}
	return out
}

// sortBy sorts by a field of keys.json (ID, Alias, State, Spec, Usage, Origin, CreationDate),
// then by ID.
func sortBy(field string, list []keyRecord) ([]keyRecord, error) {
	get := map[string]func(keyRecord) string{
		"ID": func(k keyRecord) string { return k.ID }, "Alias": func(k keyRecord) string { return k.Alias },
		"State": func(k keyRecord) string { return k.State }, "Spec": func(k keyRecord) string { return k.Spec },
		"Usage": func(k keyRecord) string { return k.Usage }, "Origin": func(k keyRecord) string { return k.Origin },
		"CreationDate": func(k keyRecord) string { return k.CreationDate },
	}[field]
	if get == nil {
		return nil, fmt.Errorf("sortBy: no field %q; use ID, Alias, State, Spec, Usage, Origin or CreationDate", field)
	}
	out := slices.Clone(list)
	slices.SortStableFunc(out, func(a, b keyRecord) int { return cmp.Or(cmp.Compare(get(a), get(b)), cmp.Compare(a.ID, b.ID)) })
	return out, nil
}

func toJSON(v any) (string, error) {
	b, err := json.Marshal(v)
	return string(b), err
}

func toYAML(v any) (string, error) {
	b, err := yaml.Marshal(v)
	return strings.TrimSuffix(string(b), "\n"), err
}
