"""The crypto_task seed's example (seed 002) on octodb.tasks, as one program: a backend
(a primary with worker threads) and a device on loopback, in temporary files. The device
starts `Add` tasks, follows their progress and prints their results.

    python tasks_add.py [COUNT]
"""
import os
import random
import sys
import tempfile
import time

import octodb
import octodb.tasks as tasks


class Add(tasks.Task):
    """ add two numbers but take a long time """

    m_expected_duration = 0

    def run(self, val1, val2):
        """ run for random seconds, update duration during runtime to enable progress monitoring """
        duration = random.randint(1, 3) / 10

        self.load()
        self.m_expected_duration = duration
        self.m_total = 10
        self.save()

        for step in range(10):
            time.sleep(duration / 10)
            self.m_progress = step + 1
            self.save()
        return val1 + val2


def progress_callback(task):
    print(f"progress: {task.m_progress}/{task.m_total} (expected {task.m_expected_duration} s)")


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    with tempfile.TemporaryDirectory() as directory:
        backend_uri = f"file:{os.path.join(directory, 'backend.db')}?node=primary&bind=tcp://127.0.0.1:0"
        backend = octodb.connect(backend_uri)
        worker = tasks.Worker(backend_uri, threads=2)
        worker.register(Add)
        worker.start()

        address = backend.bound_addresses[0]
        device_uri = f"file:{os.path.join(directory, 'phone.db')}?node=secondary&connect={address}"
        dbase = tasks.Queue(device_uri)
        octodb.connect(device_uri).wait_until_ready(timeout=60)

        for cnt in range(count):
            addc = Add(dbase)
            addc.start(cnt, 1)
            print("start: " + addc.display())
            print("waiting for task completion")
            addc.join(progress_callback=progress_callback)
            print("result: " + addc.display() + " --> " + str(addc.m_result))
            addc.delete()
        worker.stop()
        backend.close()


if __name__ == "__main__":
    main()
