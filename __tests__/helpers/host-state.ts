// What a builder may leave behind on the host, read straight from /proc: for tests that check cleanup.
import { readdirSync, readFileSync } from 'fs';

/** Processes whose command line names any of `markers`, as "<pid> <command line>". */
export function processesMentioning(markers: string[]): string[] {
  const out: string[] = [];
  for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      if (markers.some((m) => cmd.includes(m))) out.push(`${pid} ${cmd}`);
    } catch {
      // gone
    }
  }
  return out;
}

/** Mount points at or under any of `dirs`, from this process's mount table. */
export function mountsUnder(dirs: string[]): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[4])
    .filter((mp) => mp && dirs.some((d) => mp === d || mp.startsWith(`${d}/`)));
}
