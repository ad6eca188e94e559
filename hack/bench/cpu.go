package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTicks is the unit of the CPU times in /proc/<pid>/stat (USER_HZ), 100 on Linux.
const clockTicks = 100

// cpuProcess is a process whose CPU time the bench reads from /proc.
type cpuProcess struct {
	name string
	pid  int // 0 when the bench did not find it
}

// cpuMeter reads the CPU time of every process a scenario runs: the operator, envtest's
// kube-apiserver and etcd (children of the bench, found by name) and the bench itself, which
// serves the KMS emulator and watches the selectors.
type cpuMeter []cpuProcess

// cpuTimes is the CPU time (user and system) of each process of a cpuMeter, in its order; -1 for
// a process not found.
type cpuTimes []time.Duration

func newCPUMeter(op *operatorProc) cpuMeter {
	children := childProcesses()
	return cpuMeter{
		{"operator", op.cmd.Process.Pid},
		{"kube-apiserver", children["kube-apiserver"]},
		{"etcd", children["etcd"]},
		{"bench (KMS emulator, watch)", os.Getpid()},
	}
}

// childProcesses returns the pid of each child process of the bench, by command name.
func childProcesses() map[string]int {
	out := map[string]int{}
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
		comm, fields, err := procStat(pid)
		if err == nil && len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			out[comm] = pid
		}
	}
	return out
}

// procStat returns a process's command name and the fields of /proc/<pid>/stat after it, from
// the state (field 3) on.
func procStat(pid int) (string, []string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", nil, err
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", nil, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return s[open+1 : end], strings.Fields(s[end+1:]), nil
}

// read returns the CPU time each process has used so far.
func (m cpuMeter) read() cpuTimes {
	out := make(cpuTimes, len(m))
	for i, p := range m {
		out[i] = -1
		if p.pid == 0 {
			continue
		}
		_, fields, err := procStat(p.pid)
		if err != nil || len(fields) < 13 {
			continue
		}
		utime, err1 := strconv.ParseInt(fields[11], 10, 64) // field 14
		stime, err2 := strconv.ParseInt(fields[12], 10, 64) // field 15
		if err1 == nil && err2 == nil {
			out[i] = time.Duration(utime+stime) * time.Second / clockTicks
		}
	}
	return out
}

// sub returns the CPU time used since before.
func (c cpuTimes) sub(before cpuTimes) cpuTimes {
	out := make(cpuTimes, len(c))
	for i := range c {
		out[i] = -1
		if c[i] >= 0 && i < len(before) && before[i] >= 0 {
			out[i] = c[i] - before[i]
		}
	}
	return out
}

// total is the CPU time of the processes found.
func (c cpuTimes) total() time.Duration {
	var t time.Duration
	for _, d := range c {
		t += max(d, 0)
	}
	return t
}

// busiest names the process that used the most CPU time.
func (c cpuTimes) busiest(m cpuMeter) string {
	best := -1
	for i, d := range c {
		if best < 0 || d > c[best] {
			best = i
		}
	}
	if best < 0 || c[best] <= 0 {
		return "none"
	}
	return m[best].name
}
