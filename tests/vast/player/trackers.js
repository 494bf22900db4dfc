// What @dailymotion/vast-client finds in VAST: reads {"chains": [url...], "documents": [xml...]}
// on stdin, resolves each chain over HTTP and parses each document, and prints, for each, its
// ads' trackers by kind ({"ads": [{id, sequence, trackers}]} or {"error": message}) as JSON.
'use strict';

const { VASTClient, VASTParser } = require('@dailymotion/vast-client');
const { DOMParser } = require('@xmldom/xmldom');

const urlOf = (template) => (typeof template === 'string' ? template : template && template.url);

function add(trackers, kind, templates) {
  for (const template of templates || []) {
    const url = urlOf(template);
    if (url) (trackers[kind] = trackers[kind] || []).push(url);
  }
}

function addEvents(trackers, prefix, events) {
  for (const [event, templates] of Object.entries(events || {})) add(trackers, `${prefix}:${event}`, templates);
}

function summary(response) {
  return {
    ads: response.ads.map((ad) => {
      const trackers = {};
      add(trackers, 'impression', ad.impressionURLTemplates);
      add(trackers, 'error', ad.errorURLTemplates);
      for (const viewable of ad.viewableImpression || []) {
        add(trackers, 'viewable', viewable.viewable);
        add(trackers, 'notViewable', viewable.notViewable);
        add(trackers, 'viewUndetermined', viewable.viewUndetermined);
      }
      for (const verification of ad.adVerifications || []) {
        add(trackers, 'verification', [verification.resource]);
        addEvents(trackers, 'verification', verification.trackingEvents);
      }
      for (const creative of ad.creatives) {
        const kind = creative.type;
        addEvents(trackers, kind, creative.trackingEvents);
        if (kind === 'linear') {
          add(trackers, 'linear:clickThrough', [creative.videoClickThroughURLTemplate]);
          add(trackers, 'linear:clickTracking', creative.videoClickTrackingURLTemplates);
          add(trackers, 'linear:customClick', creative.videoCustomClickURLTemplates);
          add(trackers, 'linear:mediaFile', creative.mediaFiles.map((media) => media.fileURL));
        }
        for (const variation of creative.variations || []) {
          if (kind === 'companion') {
            add(trackers, 'companion:clickThrough', [variation.companionClickThroughURLTemplate]);
            add(trackers, 'companion:clickTracking', variation.companionClickTrackingURLTemplates);
            addEvents(trackers, 'companion', variation.trackingEvents);
          } else {
            add(trackers, 'nonlinear:clickThrough', [variation.nonlinearClickThroughURLTemplate]);
            add(trackers, 'nonlinear:clickTracking', variation.nonlinearClickTrackingURLTemplates);
          }
        }
      }
      for (const kind of Object.keys(trackers)) trackers[kind].sort();
      return { id: ad.id, sequence: ad.sequence, trackers };
    }),
  };
}

async function judged(promise) {
  try {
    return summary(await promise);
  } catch (error) {
    return { error: String(error && error.message ? error.message : error) };
  }
}

async function main() {
  let input = '';
  for await (const chunk of process.stdin) input += chunk;
  const { chains = [], documents = [] } = JSON.parse(input);
  const out = { chains: [], documents: [] };
  for (const url of chains) {
    out.chains.push(await judged(new VASTClient().get(url, { timeout: 5000 })));
  }
  for (const xml of documents) {
    const parsed = new DOMParser().parseFromString(xml, 'text/xml');
    out.documents.push(await judged(new VASTParser().parseVAST(parsed)));
  }
  process.stdout.write(JSON.stringify(out));
}

main();
