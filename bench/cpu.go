package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of /proc's CPU times (100 on Linux).
const clockTick = 100

// machineBusy returns the CPU time every CPU spent doing anything but idle
// or waiting for I/O, from /proc/stat.
func machineBusy() (time.Duration, bool) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, false
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		switch i {
		case 3, 4: // idle, iowait
		case 8, 9: // guest, guest_nice: already in user and nice
		default:
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / clockTick, true
}

// processCPU returns a process's user and system CPU time.
func processCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name, in parentheses, may hold spaces: fields start after it.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, false
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / clockTick, true
}

// CPU is what a phase cost in CPU time, per request (or transaction).
type CPU struct {
	Machine time.Duration // every CPU's busy time: the database, the kernel, lockstep, the load, other tenants
	Process time.Duration // the lockstep process (in-process: with the load generator), or pgbench's client
	DB      time.Duration // the PostgreSQL backends serving it (0 when the database is not on this machine)
}

// Own is the CPU spent by the process and its database backends: unlike
// Machine, it leaves out whatever else runs on the machine.
func (c CPU) Own() time.Duration {
	if c.Process <= 0 || c.DB <= 0 {
		return 0
	}
	return c.Process + c.DB
}

type cpuMark struct {
	machine, proc time.Duration
	okM, okP      bool
}

func markCPU(pid int) cpuMark {
	var m cpuMark
	m.machine, m.okM = machineBusy()
	if pid > 0 {
		m.proc, m.okP = processCPU(pid)
	}
	return m
}

// cpuSum adds up the CPU spent over several phases.
type cpuSum struct {
	machine, proc, db time.Duration
	badM, badP, noDB  bool
}

func (s *cpuSum) addDB(d time.Duration, ok bool) {
	s.db += d
	if !ok {
		s.noDB = true
	}
}

func (s *cpuSum) add(start, end cpuMark) {
	if start.okM && end.okM {
		s.machine += end.machine - start.machine
	} else {
		s.badM = true
	}
	if start.okP && end.okP {
		s.proc += end.proc - start.proc
	} else {
		s.badP = true
	}
}

func (s *cpuSum) perRequest(n int) CPU {
	var c CPU
	if n <= 0 {
		return c
	}
	if !s.badM {
		c.Machine = s.machine / time.Duration(n)
	}
	if !s.badP {
		c.Process = s.proc / time.Duration(n)
	}
	if !s.noDB {
		c.DB = s.db / time.Duration(n)
	}
	return c
}

// perRequest divides the CPU spent since start by n.
func (start cpuMark) perRequest(end cpuMark, n int) CPU {
	var c CPU
	if n <= 0 {
		return c
	}
	if start.okM && end.okM {
		c.Machine = (end.machine - start.machine) / time.Duration(n)
	}
	if start.okP && end.okP {
		c.Process = (end.proc - start.proc) / time.Duration(n)
	}
	return c
}

func usString(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}
