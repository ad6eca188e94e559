package render

import (
	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/checker"
	"github.com/google/cel-go/common/ast"
)

// The sizes, in characters, that the cost estimate assumes for the fields of a key: a UUID for
// an id, KMS's limits for an alias and tags, and generous bounds for the rest. A key that
// exceeds them is still bounded by the runtime limit.
var keyFieldSizes = map[string]uint64{
	"id": 36, "alias": 255, "state": 17, "spec": 64, "usage": 64, "origin": 64, "creationDate": 20,
	"tags": 20,
}

const (
	tagKeySize   = 36
	tagValueSize = 43
)

// estimator gives the cost estimate the sizes of keys, MaxKeys at most, and of their fields,
// wherever an expression selects them; and the cost of this package's functions.
type estimator struct {
	// keyFields names the field of a key that an expression, by id, selects.
	keyFields map[int64]string
	// tagValues holds the expressions, by id, that read one tag of a key.
	tagValues map[int64]bool
}

func newEstimator(checked *cel.Ast) *estimator {
	e := &estimator{keyFields: map[int64]string{}, tagValues: map[int64]bool{}}
	a := checked.NativeRep()
	isKey := func(x ast.Expr) bool { return a.GetType(x.ID()).TypeName() == keyType.TypeName() }
	isTags := func(x ast.Expr) bool { return e.keyFields[x.ID()] == "tags" }
	// Post-order, so that a key's tags are known before an index into them.
	ast.PostOrderVisit(a.Expr(), ast.NewExprVisitor(func(x ast.Expr) {
		switch x.Kind() {
		case ast.SelectKind:
			switch sel := x.AsSelect(); {
			case isKey(sel.Operand()):
				e.keyFields[x.ID()] = sel.FieldName()
			case isTags(sel.Operand()):
				e.tagValues[x.ID()] = true
			}
		case ast.CallKind:
			if call := x.AsCall(); call.FunctionName() == "_[_]" && isTags(call.Args()[0]) {
				e.tagValues[x.ID()] = true
			}
		}
	}))
	return e
}

func (e *estimator) EstimateSize(node checker.AstNode) *checker.SizeEstimate {
	if path := node.Path(); len(path) > 0 && path[0] == "keys" {
		switch {
		case len(path) == 1:
			return &checker.SizeEstimate{Min: 0, Max: MaxKeys}
		case len(path) == 3 && path[1] == "@items":
			return sizeOfField(path[2])
		case len(path) == 4 && path[1] == "@items" && path[2] == "tags" && path[3] == "@keys":
			return &checker.SizeEstimate{Min: 1, Max: tagKeySize}
		case len(path) == 4 && path[1] == "@items" && path[2] == "tags" && path[3] == "@values":
			return &checker.SizeEstimate{Min: 0, Max: tagValueSize}
		}
	}
	if f, ok := e.keyFields[node.Expr().ID()]; ok {
		return sizeOfField(f)
	}
	if e.tagValues[node.Expr().ID()] {
		return &checker.SizeEstimate{Min: 0, Max: tagValueSize}
	}
	return nil
}

func sizeOfField(name string) *checker.SizeEstimate {
	if n, ok := keyFieldSizes[name]; ok {
		return &checker.SizeEstimate{Min: 0, Max: n}
	}
	return nil
}

func (e *estimator) EstimateCallCost(_, overloadID string, target *checker.AstNode, _ []checker.AstNode) *checker.CallEstimate {
	switch overloadID {
	case "list_key_byAlias_string":
		size := checker.SizeEstimate{Min: 0, Max: MaxKeys}
		if target != nil {
			if s := (*target).ComputedSize(); s != nil {
				size = *s
			} else if s := e.EstimateSize(*target); s != nil {
				size = *s
			}
		}
		return &checker.CallEstimate{CostEstimate: checker.CostEstimate{Min: 1, Max: 1 + size.Max}}
	case "toJson_dyn", "toYaml_dyn", "string_format":
		// Their results are capped at MaxDataBytes, and charged by size.
		return &checker.CallEstimate{
			CostEstimate: checker.CostEstimate{Min: 1, Max: 1 + MaxDataBytes/10},
			ResultSize:   &checker.SizeEstimate{Min: 0, Max: MaxDataBytes},
		}
	}
	return nil
}
